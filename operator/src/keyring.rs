//! The keyring Secret: `keyring.json` (the token spec's keyring, which agents mount), plus `active-kid` and
//! `active-key` (raw bytes) for a backend that only needs the key to sign with.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use vd_token::Keyring;
use vd_token::rotation::{self, Rotation, RotationError, RotationPolicy};

pub const KEYRING_FILE: &str = "keyring.json";
pub const ACTIVE_KID: &str = "active-kid";
pub const ACTIVE_KEY: &str = "active-key";
/// On the Secret: the last `videodelivery.dev/rotate` value acted on, so one request rotates once.
pub const ROTATION_HANDLED_ANNOTATION: &str = "videodelivery.dev/rotate-handled";

#[derive(Debug, thiserror::Error)]
pub enum KeyringSecretError {
    /// The Secret exists but does not hold a keyring the operator can read. It is never overwritten: that would
    /// invalidate every token in flight; deleting the Secret makes the operator start a new keyring.
    #[error("Secret {secret} does not hold a valid keyring ({reason}); delete it to start a new keyring")]
    Corrupt { secret: String, reason: String },
    #[error(transparent)]
    Rotation(#[from] RotationError),
}

/// The keyring stored in a Secret, if there is one.
pub fn read(secret: Option<&Secret>) -> Result<Option<Keyring>, KeyringSecretError> {
    let Some(secret) = secret else { return Ok(None) };
    let name = secret.metadata.name.clone().unwrap_or_default();
    let bytes = secret.data.as_ref().and_then(|d| d.get(KEYRING_FILE));
    let Some(bytes) = bytes else {
        return Err(KeyringSecretError::Corrupt { secret: name, reason: format!("no {KEYRING_FILE} field") });
    };
    // KeyringError's messages name keys by id, never by secret.
    Keyring::from_json(&bytes.0)
        .map(Some)
        .map_err(|e| KeyringSecretError::Corrupt { secret: name, reason: e.to_string() })
}

/// The Secret fields for a keyring.
pub fn data(keyring: &Keyring) -> BTreeMap<String, ByteString> {
    let mut data = BTreeMap::from([(KEYRING_FILE.to_string(), ByteString(keyring.to_json().into_bytes()))]);
    // A starting keyring has no active key: backends find none to sign with until its pending key is promoted.
    if let Some(active) = keyring.active() {
        data.insert(ACTIVE_KID.to_string(), ByteString(active.kid().as_bytes().to_vec()));
        data.insert(ACTIVE_KEY.to_string(), ByteString(active.secret_bytes().to_vec()));
    }
    data
}

/// One rotation step at `now`. A manual rotation is due when the resource's request differs from the one the
/// Secret says was handled.
pub fn step(
    current: Option<&Keyring>,
    now: u64,
    policy: &RotationPolicy,
    requested: Option<&str>,
    handled: Option<&str>,
) -> Result<Rotation, KeyringSecretError> {
    let force = requested.is_some_and(|r| Some(r) != handled);
    Ok(rotation::rotate(current, now, policy, force, &mut rotation::os_random)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RotationPolicy {
        RotationPolicy { rotation_interval: 100, propagation_delay: 5, max_lifetime: 20, clock_skew: 1 }
    }

    #[test]
    fn a_reconcile_of_an_unchanged_keyring_changes_nothing() {
        let first = step(None, 1000, &policy(), None, None).unwrap();
        assert!(first.changed());
        let again = step(Some(&first.keyring), 1001, &policy(), None, None).unwrap();
        assert!(!again.changed());
        assert_eq!(data(&again.keyring), data(&first.keyring));
    }

    #[test]
    fn a_rotation_request_is_acted_on_once() {
        let k = step(None, 1000, &policy(), None, None).unwrap().keyring;
        let r = step(Some(&k), 1001, &policy(), Some("a"), None).unwrap();
        assert!(r.changed(), "new request publishes a key");
        let r2 = step(Some(&r.keyring), 1002, &policy(), Some("a"), Some("a")).unwrap();
        assert!(!r2.changed(), "the handled request does nothing more");
    }

    #[test]
    fn corrupt_secrets_are_reported_without_their_content() {
        let s = Secret {
            metadata: kube::api::ObjectMeta { name: Some("x-keyring".into()), ..Default::default() },
            data: Some(BTreeMap::from([(
                KEYRING_FILE.into(),
                ByteString(b"{\"version\":1,\"keys\":\"s3cr3t\"}".to_vec()),
            )])),
            ..Default::default()
        };
        let err = read(Some(&s)).unwrap_err().to_string();
        assert!(err.contains("x-keyring") && !err.contains("s3cr3t"), "{err}");
    }
}
