//! Two-phase key rotation (spec §7.4), shared by the operator and `vdctl rotate`.
//!
//! [`rotate`] is a pure function of the current keyring, the clock and the policy: calling it again with the same
//! inputs changes nothing, so a reconcile never churns keys. New key material comes only from the `random` source.

use crate::keyring::{Key, KeyState, Keyring, KeyringError};

/// Timings of a rotation, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long a key stays active.
    pub rotation_interval: u64,
    /// How long a new key stays pending so that every agent and backend has loaded it before anyone signs with it.
    pub propagation_delay: u64,
    /// The verifiers' maximum token lifetime.
    pub max_lifetime: u64,
    /// The verifiers' clock skew tolerance.
    pub clock_skew: u64,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy { rotation_interval: 7 * 86_400, propagation_delay: 120, max_lifetime: 86_400, clock_skew: 30 }
    }
}

impl RotationPolicy {
    /// How long a retired key must still be accepted: a backend may sign with it until it sees the promotion
    /// (up to the propagation delay), and such a token lives up to the maximum lifetime plus skew.
    pub fn retirement_grace(&self) -> u64 {
        self.propagation_delay.saturating_add(self.max_lifetime).saturating_add(self.clock_skew)
    }

    /// Refuses timings that would keep more than one key retiring, or never promote.
    pub fn validate(&self) -> Result<(), RotationError> {
        if self.rotation_interval <= self.retirement_grace() {
            return Err(RotationError::IntervalTooShort {
                interval: self.rotation_interval,
                grace: self.retirement_grace(),
            });
        }
        Ok(())
    }
}

/// Something a rotation did, for events and logs. Names keys by id only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The first key of a brand-new keyring, active at once: no token or agent could depend on an older one.
    Created { kid: String },
    /// A new key was published as pending: a successor, or the first key of a [started](start) keyring.
    Published { kid: String, activate_after: u64 },
    /// A pending key became active. `retired` is the previous active key, now retiring until `accept_until`;
    /// `None` when the keyring was starting and nothing was active.
    Promoted { kid: String, retired: Option<String>, accept_until: u64 },
    /// A retiring key passed its deadline and was removed.
    Removed { kid: String },
}

/// The keyring after a rotation step, what changed, and when to look again.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub keyring: Keyring,
    pub events: Vec<Event>,
    /// The next time something is due (Unix seconds): a controller requeues exactly then.
    pub next_deadline: u64,
}

impl Rotation {
    pub fn changed(&self) -> bool {
        !self.events.is_empty()
    }
}

/// Why a rotation could not run.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(
        "the rotation interval ({interval}s) must be longer than propagation delay + max token lifetime + clock skew ({grace}s)"
    )]
    IntervalTooShort { interval: u64, grace: u64 },
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
}

/// Random bytes from the operating system, the only source production code uses for keys.
pub fn os_random(buf: &mut [u8]) -> Result<(), RotationError> {
    getrandom::fill(buf).map_err(|e| RotationError::Random(e.to_string()))
}

/// Bytes in a generated key.
pub const GENERATED_KEY_LEN: usize = 32;

/// One step of rotation at `now`. `force` publishes a new pending key at once, unless one is already pending.
/// Without a `current` keyring it creates a brand-new one whose key is active at once; a keyring that replaces a
/// lost one must come from [`start`] instead.
pub fn rotate(
    current: Option<&Keyring>,
    now: u64,
    policy: &RotationPolicy,
    force: bool,
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), RotationError>,
) -> Result<Rotation, RotationError> {
    policy.validate()?;
    let mut keys: Vec<Key> = current.map(|k| k.keys().to_vec()).unwrap_or_default();
    let mut events = Vec::new();

    if keys.is_empty() {
        let mut key = new_key(now, KeyState::Active, random)?;
        key.activated_at = Some(now);
        events.push(Event::Created { kid: key.kid.clone() });
        keys.push(key);
    }

    keys.retain(|k| {
        let expired = k.state == KeyState::Retiring && k.accept_until.is_some_and(|until| now > until);
        if expired {
            events.push(Event::Removed { kid: k.kid.clone() });
        }
        !expired
    });

    if let Some(p) = keys.iter().position(|k| k.state == KeyState::Pending && k.activate_after.is_none_or(|t| now >= t))
    {
        let accept_until = now.saturating_add(policy.retirement_grace());
        let mut retired = None;
        for k in keys.iter_mut().filter(|k| k.state == KeyState::Active) {
            k.state = KeyState::Retiring;
            k.retired_at = Some(now);
            k.accept_until = Some(accept_until);
            retired = Some(k.kid.clone());
        }
        let key = &mut keys[p];
        key.state = KeyState::Active;
        key.activate_after = None;
        key.activated_at = Some(now);
        events.push(Event::Promoted { kid: key.kid.clone(), retired, accept_until });
    }

    let pending = keys.iter().any(|k| k.state == KeyState::Pending);
    if !pending && (force || publish_due(&keys, policy).is_some_and(|due| now >= due)) {
        let mut key = new_key(now, KeyState::Pending, random)?;
        let activate_after = now.saturating_add(policy.propagation_delay);
        key.activate_after = Some(activate_after);
        events.push(Event::Published { kid: key.kid.clone(), activate_after });
        keys.push(key);
    }

    let keyring = Keyring::from_keys(keys)?;
    let next_deadline = next_deadline(&keyring, policy);
    Ok(Rotation { keyring, events, next_deadline })
}

/// When the active key's successor must be published so that it is promoted right at the interval; `None` without
/// an active key, since a starting keyring's pending key is already the successor.
fn publish_due(keys: &[Key], policy: &RotationPolicy) -> Option<u64> {
    keys.iter().find(|k| k.state == KeyState::Active).map(|k| {
        k.activated_at
            .unwrap_or(k.created_at)
            .saturating_add(policy.rotation_interval.saturating_sub(policy.propagation_delay))
    })
}

/// The earliest time anything in the keyring is due.
pub fn next_deadline(keyring: &Keyring, policy: &RotationPolicy) -> u64 {
    let mut next = u64::MAX;
    let mut pending = false;
    for k in keyring.keys() {
        match k.state {
            KeyState::Pending => {
                pending = true;
                next = next.min(k.activate_after.unwrap_or(0));
            }
            KeyState::Retiring => next = next.min(k.accept_until.unwrap_or(0).saturating_add(1)),
            KeyState::Active => {}
        }
    }
    if !pending && let Some(due) = publish_due(keyring.keys(), policy) {
        next = next.min(due);
    }
    next
}

/// The time the next promotion will happen: the pending key's (for a starting keyring too), or the active key's end
/// of interval.
pub fn next_rotation(keyring: &Keyring, policy: &RotationPolicy) -> u64 {
    if let Some(pending) = keyring.next_pending() {
        // A pending key without `activate_after` is promoted at the next step.
        return pending.activate_after.unwrap_or(pending.created_at);
    }
    // A valid keyring without a pending key has an active one.
    keyring
        .active()
        .map(|k| k.activated_at.unwrap_or(k.created_at).saturating_add(policy.rotation_interval))
        .unwrap_or(0)
}

/// A keyring recreated after its predecessor was lost (spec §7.4): one pending key, active at
/// `now + propagation_delay`, and no active key, so nobody signs with a key agents cannot have loaded yet.
/// [`rotate`] promotes it when it is due.
pub fn start(
    now: u64,
    policy: &RotationPolicy,
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), RotationError>,
) -> Result<Rotation, RotationError> {
    policy.validate()?;
    let mut key = new_key(now, KeyState::Pending, random)?;
    let activate_after = now.saturating_add(policy.propagation_delay);
    key.activate_after = Some(activate_after);
    let events = vec![Event::Published { kid: key.kid.clone(), activate_after }];
    let keyring = Keyring::from_keys(vec![key])?;
    let next_deadline = next_deadline(&keyring, policy);
    Ok(Rotation { keyring, events, next_deadline })
}

/// A fresh keyring with one active key: what `vdctl keygen` writes, and the first key of a brand-new keyring.
pub fn generate(
    now: u64,
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), RotationError>,
) -> Result<Keyring, RotationError> {
    let mut key = new_key(now, KeyState::Active, random)?;
    key.activated_at = Some(now);
    Ok(Keyring::from_keys(vec![key])?)
}

fn new_key(
    now: u64,
    state: KeyState,
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), RotationError>,
) -> Result<Key, RotationError> {
    let mut secret = vec![0u8; GENERATED_KEY_LEN];
    random(&mut secret)?;
    let mut tag = [0u8; 3];
    random(&mut tag)?;
    // Sortable by creation time, unique through the random tag even for two keys in one second.
    let kid = format!("k{now}-{:02x}{:02x}{:02x}", tag[0], tag[1], tag[2]);
    Ok(Key::new(kid, state, secret, now))
}
