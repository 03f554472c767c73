//! What a VideoDelivery's status says, derived in one pure function from what a reconcile observed, so that every
//! path through the reconcile (including the failing ones) ends with the same truthful status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{KeyStatus, VideoDeliveryStatus};

/// Condition types.
pub mod types {
    pub const READY: &str = "Ready";
    pub const KEYS_READY: &str = "KeysReady";
    pub const AGENTS_AVAILABLE: &str = "AgentsAvailable";
    /// Present while `spec.expose` is set (or what it made is still being removed).
    pub const EXPOSED: &str = "Exposed";
}

/// Condition reasons, CamelCase as Kubernetes writes them.
pub mod reasons {
    pub const READY: &str = "Ready";
    /// The spec passed the API server but not the operator (a CRD older than the operator, or floors).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The API server refused an object the operator applies; its message is on the condition.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// The API server could not be asked (timeouts, 5xx); retried with backoff.
    pub const API_UNAVAILABLE: &str = "APIUnavailable";
    pub const KEYS_READY: &str = "KeysReady";
    pub const KEYRING_INVALID: &str = "KeyringInvalid";
    /// The keyring Secret was lost and made again: its first key is pending, nobody can sign until it activates.
    pub const KEYRING_RECREATED: &str = "KeyringRecreated";
    pub const STORAGE_CREDENTIALS_MISSING: &str = "StorageCredentialsMissing";
    pub const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
    pub const AGENTS_UNAVAILABLE: &str = "AgentsUnavailable";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    pub const NOT_DEPLOYED: &str = "NotDeployed";
    /// `spec.tls.secretName` names no Secret in the namespace.
    pub const TLS_SECRET_MISSING: &str = "TLSSecretMissing";
    /// `spec.tls.secretName` is not a `kubernetes.io/tls` Secret with `tls.crt` and `tls.key`.
    pub const TLS_SECRET_INVALID: &str = "TLSSecretInvalid";
    /// A Gateway the HTTPRoute names accepted it and resolved its backends.
    pub const HTTPROUTE_ACCEPTED: &str = "HTTPRouteAccepted";
    /// The Ingress's controller published an address for it.
    pub const INGRESS_ADDRESSED: &str = "IngressAddressed";
    /// The HTTPRoute is applied but no Gateway it names has said anything of it yet.
    pub const HTTPROUTE_PENDING: &str = "HTTPRoutePending";
    /// A Gateway the HTTPRoute names refused it (Accepted=False) or cannot reach its backends (ResolvedRefs=False).
    pub const ROUTE_NOT_ACCEPTED: &str = "RouteNotAccepted";
    /// The Ingress is applied but no controller has published an address for it yet.
    pub const INGRESS_PENDING: &str = "IngressPending";
    /// `expose.gateway` in a cluster without the Gateway API's HTTPRoute kind.
    pub const GATEWAY_API_UNAVAILABLE: &str = "GatewayAPIUnavailable";
}

/// The keyring as status shows it: ids, states and times, never secrets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeysView {
    pub active_key_id: Option<String>,
    pub last_rotation_time: Option<String>,
    pub next_rotation_time: Option<String>,
    pub keys: Vec<KeyStatus>,
}

/// What became of the keyring in this reconcile.
#[derive(Debug, Clone, PartialEq)]
pub enum KeysObserved {
    /// Not looked at (the spec was refused first).
    Unknown,
    /// A keyring with an active key.
    Ready(KeysView),
    /// A keyring made again after loss: no active key until `pending` activates.
    Recreated { view: KeysView, message: String },
    /// The Secret holds something that is not a keyring; it is left alone.
    Invalid(String),
    /// The API server could not be asked.
    Unavailable(String),
}

/// The agents' Deployment as read back from the API server, whether or not this reconcile applied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentsObserved {
    pub desired: i32,
    pub ready: i32,
    pub available: i32,
    /// Pods already on the newest template; below `desired` while a rollout runs.
    pub updated: i32,
}

/// Why the agents could not be brought to the spec this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    InvalidSpec(String),
    StorageCredentialsMissing(String),
    /// The API server refused an applied object (`kind/name: message`).
    ApplyFailed(String),
    ApiUnavailable(String),
    TlsSecretMissing(String),
    TlsSecretInvalid(String),
}

/// What became of `spec.expose` in this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// The HTTPRoute or Ingress is applied and its controller serves it (`by` says who); viewers use `url`.
    Exposed { kind: &'static str, name: String, url: String, by: String },
    /// It could not be applied (or, with `expose` removed, not deleted), for `reason`.
    NotExposed { reason: &'static str, message: String },
}

impl Blocked {
    pub fn reason(&self) -> &'static str {
        match self {
            Blocked::InvalidSpec(_) => reasons::INVALID_SPEC,
            Blocked::StorageCredentialsMissing(_) => reasons::STORAGE_CREDENTIALS_MISSING,
            Blocked::ApplyFailed(_) => reasons::APPLY_FAILED,
            Blocked::ApiUnavailable(_) => reasons::API_UNAVAILABLE,
            Blocked::TlsSecretMissing(_) => reasons::TLS_SECRET_MISSING,
            Blocked::TlsSecretInvalid(_) => reasons::TLS_SECRET_INVALID,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            Blocked::InvalidSpec(m)
            | Blocked::StorageCredentialsMissing(m)
            | Blocked::ApplyFailed(m)
            | Blocked::ApiUnavailable(m)
            | Blocked::TlsSecretMissing(m)
            | Blocked::TlsSecretInvalid(m) => m,
        }
    }
}

/// Everything one reconcile learned.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub generation: Option<i64>,
    /// Where the agents answer: the public URL when exposed, else the in-cluster one.
    pub url: String,
    pub keys: KeysObserved,
    /// The first thing that kept the agents from matching the spec, if any.
    pub blocked: Option<Blocked>,
    /// `None` when no Deployment exists.
    pub agents: Option<AgentsObserved>,
    /// `None` when `spec.expose` is not set and nothing made for it remains.
    pub exposure: Option<Exposure>,
}

/// The status for `observed`. `old` supplies what this reconcile could not see (key fields when the keyring was
/// not read) and each condition's lastTransitionTime while its status holds; `now` stamps new transitions.
pub fn derive(observed: &Observed, old: &VideoDeliveryStatus, now: Timestamp) -> VideoDeliveryStatus {
    let keys = match &observed.keys {
        KeysObserved::Ready(v) | KeysObserved::Recreated { view: v, .. } => v.clone(),
        _ => KeysView {
            active_key_id: old.active_key_id.clone(),
            last_rotation_time: old.last_rotation_time.clone(),
            next_rotation_time: old.next_rotation_time.clone(),
            keys: old.keys.clone(),
        },
    };
    let (keys_ok, keys_reason, keys_message) = match &observed.keys {
        KeysObserved::Ready(v) => (
            true,
            reasons::KEYS_READY,
            format!("backends sign with key {}", v.active_key_id.as_deref().unwrap_or_default()),
        ),
        KeysObserved::Recreated { message, .. } => (false, reasons::KEYRING_RECREATED, message.clone()),
        KeysObserved::Invalid(m) => (false, reasons::KEYRING_INVALID, m.clone()),
        KeysObserved::Unavailable(m) => (false, reasons::API_UNAVAILABLE, m.clone()),
        KeysObserved::Unknown => match &observed.blocked {
            Some(b) => (false, b.reason(), b.message().to_string()),
            None => (false, reasons::API_UNAVAILABLE, "the keyring was not read".into()),
        },
    };

    let (agents_ok, agents_reason, agents_message) = match observed.agents {
        None => (false, reasons::NOT_DEPLOYED, "no agent Deployment exists yet".to_string()),
        Some(a) if a.desired == 0 => (false, reasons::SCALED_TO_ZERO, "no agents are wanted".to_string()),
        Some(a) if a.available >= a.desired && a.updated >= a.desired => {
            (true, reasons::MINIMUM_REPLICAS_AVAILABLE, format!("{}/{} agents available", a.available, a.desired))
        }
        Some(a) if a.available >= a.desired => (
            true,
            reasons::MINIMUM_REPLICAS_AVAILABLE,
            format!("{}/{} agents available, {} updated to the newest spec", a.available, a.desired, a.updated),
        ),
        Some(a) => (false, reasons::AGENTS_UNAVAILABLE, format!("{}/{} agents available", a.available, a.desired)),
    };

    let exposed = observed.exposure.as_ref().map(|e| match e {
        Exposure::Exposed { kind, name, url, by } => {
            let reason = if *kind == "Ingress" { reasons::INGRESS_ADDRESSED } else { reasons::HTTPROUTE_ACCEPTED };
            (true, reason, format!("{kind} {name} routes {url} to the agents ({by})"))
        }
        Exposure::NotExposed { reason, message } => (false, *reason, message.clone()),
    });

    // Ready says why it is not, most fundamental cause first. A user who asked for exposure is not served until
    // viewers can reach the agents, so a failed exposure makes Ready False too, after the agents' own causes.
    let (ready, ready_reason, ready_message) = if let Some(b) = &observed.blocked {
        let serving = match observed.agents {
            Some(a) if a.available > 0 => {
                format!("; {}/{} agents keep serving the previous configuration", a.available, a.desired)
            }
            _ => String::new(),
        };
        (false, b.reason(), format!("{}{serving}", b.message()))
    } else if !keys_ok {
        (false, keys_reason, keys_message.clone())
    } else if !agents_ok {
        (false, agents_reason, agents_message.clone())
    } else if let Some((false, reason, message)) = &exposed {
        (false, *reason, message.clone())
    } else {
        (true, reasons::READY, format!("serving at {}", observed.url))
    };

    let condition = |type_: &str, ok: bool, reason: &str, message: String| -> Condition {
        let status = if ok { "True" } else { "False" };
        let last_transition_time = match old.conditions.iter().find(|c| c.type_ == type_) {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(now),
        };
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: observed.generation,
            last_transition_time,
        }
    };
    VideoDeliveryStatus {
        observed_generation: observed.generation,
        conditions: [
            Some(condition(types::READY, ready, ready_reason, ready_message)),
            Some(condition(types::KEYS_READY, keys_ok, keys_reason, keys_message)),
            Some(condition(types::AGENTS_AVAILABLE, agents_ok, agents_reason, agents_message)),
            exposed.map(|(ok, reason, message)| condition(types::EXPOSED, ok, reason, message)),
        ]
        .into_iter()
        .flatten()
        .collect(),
        active_key_id: keys.active_key_id,
        last_rotation_time: keys.last_rotation_time,
        next_rotation_time: keys.next_rotation_time,
        keys: keys.keys,
        desired_agents: observed.agents.map(|a| a.desired),
        ready_agents: observed.agents.map(|a| a.ready),
        url: Some(observed.url.clone()),
        // Counted by the controller in sidecar mode, not derived here.
        sidecars: old.sidecars.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(kid: &str) -> KeysView {
        KeysView { active_key_id: Some(kid.into()), ..Default::default() }
    }

    fn agents(desired: i32, available: i32) -> Option<AgentsObserved> {
        Some(AgentsObserved { desired, ready: available, available, updated: desired })
    }

    fn observed(keys: KeysObserved, blocked: Option<Blocked>, agents: Option<AgentsObserved>) -> Observed {
        Observed {
            generation: Some(7),
            url: "http://media-agent.ns.svc/videos/".into(),
            keys,
            blocked,
            agents,
            exposure: None,
        }
    }

    fn cond<'a>(s: &'a VideoDeliveryStatus, t: &str) -> (&'a str, &'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (&c.status, &c.reason, &c.message)
    }

    #[test]
    fn ready_names_the_most_fundamental_cause() {
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let ready = KeysObserved::Ready(view("k1"));
        let cases: Vec<(&str, Observed, &str, &str, &str)> = vec![
            ("all good", observed(ready.clone(), None, agents(2, 2)), "True", "Ready", "serving at http://"),
            (
                "agents starting",
                observed(ready.clone(), None, agents(2, 1)),
                "False",
                "AgentsUnavailable",
                "1/2 agents available",
            ),
            ("scaled to zero", observed(ready.clone(), None, agents(0, 0)), "False", "ScaledToZero", "no agents"),
            ("no deployment", observed(ready.clone(), None, None), "False", "NotDeployed", "no agent Deployment"),
            (
                "apply refused while agents serve",
                observed(
                    ready.clone(),
                    Some(Blocked::ApplyFailed("Deployment/media-agent: denied by policy".into())),
                    agents(2, 2),
                ),
                "False",
                "ApplyFailed",
                "Deployment/media-agent: denied by policy; 2/2 agents keep serving the previous configuration",
            ),
            (
                "credentials missing while agents serve",
                observed(
                    ready.clone(),
                    Some(Blocked::StorageCredentialsMissing("Secret \"s3\" does not exist".into())),
                    agents(2, 2),
                ),
                "False",
                "StorageCredentialsMissing",
                "Secret \"s3\" does not exist; 2/2 agents keep serving",
            ),
            (
                "invalid spec",
                observed(KeysObserved::Unknown, Some(Blocked::InvalidSpec("bad".into())), None),
                "False",
                "InvalidSpec",
                "bad",
            ),
            (
                "keyring recreated",
                observed(
                    KeysObserved::Recreated { view: KeysView::default(), message: "pending until T".into() },
                    None,
                    agents(2, 2),
                ),
                "False",
                "KeyringRecreated",
                "pending until T",
            ),
            (
                "keyring invalid",
                observed(KeysObserved::Invalid("Secret x is corrupt".into()), None, agents(2, 2)),
                "False",
                "KeyringInvalid",
                "Secret x is corrupt",
            ),
            (
                "API down",
                observed(
                    KeysObserved::Unavailable("timed out".into()),
                    Some(Blocked::ApiUnavailable("timed out".into())),
                    None,
                ),
                "False",
                "APIUnavailable",
                "timed out",
            ),
        ];
        for (name, obs, status, reason, message) in cases {
            let s = derive(&obs, &VideoDeliveryStatus::default(), t);
            let (st, re, me) = cond(&s, types::READY);
            assert_eq!((st, re), (status, reason), "{name}");
            assert!(me.starts_with(message), "{name}: {me}");
            assert_eq!(s.observed_generation, Some(7), "{name}");
            assert!(s.conditions.iter().all(|c| c.observed_generation == Some(7)), "{name}");
        }
    }

    #[test]
    fn key_fields_keep_updating_while_agents_are_blocked() {
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let old = derive(&observed(KeysObserved::Ready(view("k1")), None, agents(2, 2)), &Default::default(), t);
        let blocked = Some(Blocked::ApplyFailed("Service/media-agent: invalid".into()));
        let s = derive(&observed(KeysObserved::Ready(view("k2")), blocked, agents(2, 2)), &old, t);
        assert_eq!(s.active_key_id.as_deref(), Some("k2"));
        assert_eq!(cond(&s, types::KEYS_READY).0, "True");
        assert_eq!(cond(&s, types::AGENTS_AVAILABLE).0, "True", "the agents still serve");
        assert_eq!(cond(&s, types::READY), ("False", "ApplyFailed", cond(&s, types::READY).2));
    }

    #[test]
    fn what_was_not_read_is_kept_and_transition_times_hold() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let t1 = Timestamp::from_second(1_800_000_100).unwrap();
        let old = derive(&observed(KeysObserved::Ready(view("k1")), None, agents(2, 2)), &Default::default(), t0);
        let s =
            derive(&observed(KeysObserved::Unknown, Some(Blocked::InvalidSpec("bad".into())), agents(2, 2)), &old, t1);
        assert_eq!(s.active_key_id.as_deref(), Some("k1"), "keys are kept when not read");
        let at = |s: &VideoDeliveryStatus, t: &str| {
            s.conditions.iter().find(|c| c.type_ == t).unwrap().last_transition_time.0.as_second()
        };
        assert_eq!(at(&s, types::READY), t1.as_second(), "Ready flipped");
        assert_eq!(at(&s, types::AGENTS_AVAILABLE), t0.as_second(), "AgentsAvailable held");
        assert_eq!(derive(&observed(KeysObserved::Ready(view("k1")), None, agents(2, 2)), &old, t1), old);
    }

    #[test]
    fn a_rollout_in_progress_is_said() {
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let a = Some(AgentsObserved { desired: 2, ready: 2, available: 2, updated: 1 });
        let s = derive(&observed(KeysObserved::Ready(view("k1")), None, a), &Default::default(), t);
        assert_eq!(cond(&s, types::AGENTS_AVAILABLE).2, "2/2 agents available, 1 updated to the newest spec");
    }

    #[test]
    fn a_failed_exposure_makes_ready_false_after_the_agents_own_causes() {
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let ready = KeysObserved::Ready(view("k1"));
        let mut o = observed(ready.clone(), None, agents(2, 2));
        assert!(derive(&o, &Default::default(), t).conditions.iter().all(|c| c.type_ != types::EXPOSED));
        o.exposure = Some(Exposure::Exposed {
            kind: "HTTPRoute",
            name: "media".into(),
            url: "https://video.example/videos/".into(),
            by: "accepted by Gateway apps/public (example.com/gateway)".into(),
        });
        o.url = "https://video.example/videos/".into();
        let s = derive(&o, &Default::default(), t);
        assert_eq!(
            cond(&s, types::EXPOSED),
            (
                "True",
                "HTTPRouteAccepted",
                "HTTPRoute media routes https://video.example/videos/ to the agents (accepted by Gateway apps/public \
                 (example.com/gateway))"
            )
        );
        assert_eq!(cond(&s, types::READY), ("True", "Ready", "serving at https://video.example/videos/"));
        assert_eq!(s.url.as_deref(), Some("https://video.example/videos/"));
        let down =
            Exposure::NotExposed { reason: reasons::GATEWAY_API_UNAVAILABLE, message: "no HTTPRoute kind".into() };
        o.exposure = Some(down);
        let s = derive(&o, &Default::default(), t);
        assert_eq!(cond(&s, types::EXPOSED), ("False", "GatewayAPIUnavailable", "no HTTPRoute kind"));
        assert_eq!(cond(&s, types::READY), ("False", "GatewayAPIUnavailable", "no HTTPRoute kind"));
        // Agents that are not there yet are the more fundamental cause.
        o.agents = agents(2, 1);
        assert_eq!(cond(&derive(&o, &Default::default(), t), types::READY).1, "AgentsUnavailable");
    }
}
