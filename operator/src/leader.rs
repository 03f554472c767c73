//! Leader election on a `coordination.k8s.io` Lease, so two replicas can run and only one reconciles.
//!
//! kube-runtime has no elector; this follows client-go's rules: the holder renews well within the lease
//! duration; another replica takes over only after the lease has gone unrenewed for a whole duration; every write
//! carries the resourceVersion it read, so two candidates can never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Leadership {
    Leading,
    Following { holder: String },
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, lease_duration: Duration) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
        }
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
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == self.identity {
            self.spec(spec.acquire_time.map(|t| t.0).unwrap_or(now), now, transitions)
        } else {
            let renewed = spec.renew_time.or(spec.acquire_time).map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH);
            let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            let free = holder.is_empty() || renewed + duration < now;
            if !free {
                return Ok(Leadership::Following { holder });
            }
            self.spec(now, now, transitions + 1)
        };
        let mut updated = lease;
        updated.spec = Some(new_spec);
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self.api.replace(&self.name, &PostParams::default(), &updated).await {
            Ok(_) => Ok(Leadership::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Leadership::Following { holder }),
            Err(e) => Err(e),
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
