//! Leader election on a `coordination.k8s.io` Lease, so two replicas can run and only one reconciles.
//!
//! kube-runtime has no elector, and the maintained crates compare the holder's `renewTime` with the local clock,
//! which breaks when two nodes' clocks disagree. This follows client-go's rules instead: a candidate remembers
//! when *it* last saw the lease record change, by its own monotonic clock, and takes over only after a whole lease
//! duration without a change; every write carries the resourceVersion it read, so two candidates can never both
//! win.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

/// Shortest lease accepted: renewals every third of it must fit several API round trips.
pub const MIN_LEASE_DURATION: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    observed: Arc<Mutex<Option<Observed>>>,
}

/// The last lease record seen, and when this process saw it change.
struct Observed {
    record: Record,
    at: Instant,
}

/// The parts of a lease spec whose change proves its holder is alive.
#[derive(Clone, PartialEq, Eq)]
struct Record {
    holder: String,
    renew: Option<Timestamp>,
    acquire: Option<Timestamp>,
    transitions: i32,
    duration_secs: i32,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Record {
        Record {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renew: spec.renew_time.as_ref().map(|t| t.0),
            acquire: spec.acquire_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
            duration_secs: spec.lease_duration_seconds.unwrap_or(15),
        }
    }
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Leadership {
    Leading,
    Following { holder: String },
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the lease duration must be at least {min:?}, got {got:?}", min = MIN_LEASE_DURATION)]
    TooShort { got: Duration },
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Result<Self, LeaseError> {
        if lease_duration < MIN_LEASE_DURATION {
            return Err(LeaseError::TooShort { got: lease_duration });
        }
        Ok(LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            observed: Arc::default(),
        })
    }

    /// Acquires or renews the lease once. Conflicts (someone else wrote first) count as following.
    pub async fn try_acquire_or_renew(&self) -> Result<Leadership, kube::Error> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Leadership::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Leadership::Following { holder: String::new() }),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = Record::of(&spec);
        let unchanged_for = self.observe(&record);
        let new_spec = if record.holder == self.identity {
            self.spec(record.acquire.unwrap_or(now), now, record.transitions)
        } else {
            let duration = Duration::from_secs(u64::try_from(record.duration_secs).unwrap_or(0));
            let free = record.holder.is_empty() || unchanged_for >= duration;
            if !free {
                return Ok(Leadership::Following { holder: record.holder });
            }
            self.spec(now, now, record.transitions + 1)
        };
        let mut updated = lease;
        updated.spec = Some(new_spec);
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self.api.replace(&self.name, &PostParams::default(), &updated).await {
            Ok(written) => {
                if let Some(spec) = &written.spec {
                    self.observe(&Record::of(spec));
                }
                Ok(Leadership::Leading)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Leadership::Following { holder: record.holder }),
            Err(e) => Err(e),
        }
    }

    /// Notes `record`; returns how long, by this process's clock, it has been the same.
    fn observe(&self, record: &Record) -> Duration {
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match observed.as_ref() {
            Some(o) if o.record == *record => o.at.elapsed(),
            _ => {
                *observed = Some(Observed { record: record.clone(), at: Instant::now() });
                Duration::ZERO
            }
        }
    }

    /// Gives the lease up so a standby takes over at once instead of after a lease duration.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        let name = lease.name_any();
        self.api.replace(&name, &PostParams::default(), &lease).await.map(drop)
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}
