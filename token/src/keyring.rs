//! The keyring document (spec §7): what the operator writes into the Secret and everyone else reads.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::claims::valid_kid;

/// Shortest key accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// Longest key accepted, in bytes (one SHA-256 block: longer keys would be hashed first).
pub const MAX_SECRET_LEN: usize = 64;

/// Where a key is in its life (spec §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published so agents load it; never used to sign.
    Pending,
    /// The key signers use; a keyring has at most one.
    Active,
    /// No longer used to sign; accepted until `accept_until`.
    Retiring,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
        }
    }
}

/// Key material. Its `Debug` never shows the bytes, so a key cannot leak through a log line.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        // The message names the problem, never the value.
        STANDARD
            .decode(text.as_bytes())
            .map(Secret)
            .map_err(|_| serde::de::Error::custom("a key secret is not valid base64"))
    }
}

/// One key of the keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub(crate) kid: String,
    pub(crate) state: KeyState,
    pub(crate) secret: Secret,
    pub(crate) created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) activate_after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) activated_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retired_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) accept_until: Option<u64>,
}

impl Key {
    pub(crate) fn new(kid: String, state: KeyState, secret: Vec<u8>, created_at: u64) -> Key {
        Key {
            kid,
            state,
            secret: Secret(secret),
            created_at,
            activate_after: None,
            activated_at: None,
            retired_at: None,
            accept_until: None,
        }
    }
    pub fn kid(&self) -> &str {
        &self.kid
    }
    pub fn state(&self) -> KeyState {
        self.state
    }
    pub fn created_at(&self) -> u64 {
        self.created_at
    }
    pub fn activate_after(&self) -> Option<u64> {
        self.activate_after
    }
    pub fn activated_at(&self) -> Option<u64> {
        self.activated_at
    }
    pub fn retired_at(&self) -> Option<u64> {
        self.retired_at
    }
    pub fn accept_until(&self) -> Option<u64> {
        self.accept_until
    }
    /// The raw key bytes: for a backend that must hand them to another signer. Never log them.
    pub fn secret_bytes(&self) -> &[u8] {
        &self.secret.0
    }
    /// Whether a verifier accepts tokens signed with this key at `now` (spec §7.3).
    pub fn accepted_at(&self, now: u64) -> bool {
        match self.state {
            KeyState::Pending | KeyState::Active => true,
            KeyState::Retiring => self.accept_until.is_some_and(|until| now <= until),
        }
    }
}

/// A validated keyring: at most one active key (none only while starting, with a pending key), unique ids,
/// well-sized secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Keyring {
    version: u32,
    keys: Vec<Key>,
}

/// Why a keyring document was refused. Messages name keys by id, never by secret.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// Only the position is kept: serde's own message can quote a value, and a value may be a key.
    #[error("the keyring is not valid JSON of the expected shape (line {line}, column {column})")]
    Json { line: usize, column: usize },
    #[error("keyring version {0} is not supported (expected 1)")]
    Version(u32),
    #[error("the keyring has no keys")]
    Empty,
    #[error("key id {0:?} is not 1-64 characters of A-Z a-z 0-9 _ -")]
    BadKid(String),
    #[error("key id {0:?} appears more than once")]
    DuplicateKid(String),
    #[error("key {kid:?} is {len} bytes long; keys must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes")]
    SecretLength { kid: String, len: usize },
    #[error("key {0:?} is retiring but has no accept_until")]
    RetiringWithoutDeadline(String),
    #[error("the keyring has {0} active keys; it must have at most one")]
    ActiveCount(usize),
    /// Without an active key a keyring is starting, and only a pending key can ever make it usable.
    #[error("the keyring has no active and no pending key; nobody could ever sign with it")]
    NoActiveOrPending,
}

#[derive(Deserialize)]
struct Document {
    version: u32,
    keys: Vec<Key>,
}

impl Keyring {
    /// Parses and validates a keyring document.
    pub fn from_json(bytes: &[u8]) -> Result<Keyring, KeyringError> {
        let doc: Document =
            serde_json::from_slice(bytes).map_err(|e| KeyringError::Json { line: e.line(), column: e.column() })?;
        if doc.version != 1 {
            return Err(KeyringError::Version(doc.version));
        }
        Keyring::from_keys(doc.keys)
    }

    /// Builds a keyring from keys, applying every rule of the spec.
    pub(crate) fn from_keys(keys: Vec<Key>) -> Result<Keyring, KeyringError> {
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        for (i, k) in keys.iter().enumerate() {
            if !valid_kid(&k.kid) {
                return Err(KeyringError::BadKid(k.kid.clone()));
            }
            if keys[..i].iter().any(|o| o.kid == k.kid) {
                return Err(KeyringError::DuplicateKid(k.kid.clone()));
            }
            let len = k.secret.0.len();
            if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&len) {
                return Err(KeyringError::SecretLength { kid: k.kid.clone(), len });
            }
            if k.state == KeyState::Retiring && k.accept_until.is_none() {
                return Err(KeyringError::RetiringWithoutDeadline(k.kid.clone()));
            }
        }
        let active = keys.iter().filter(|k| k.state == KeyState::Active).count();
        if active > 1 {
            return Err(KeyringError::ActiveCount(active));
        }
        if active == 0 && !keys.iter().any(|k| k.state == KeyState::Pending) {
            return Err(KeyringError::NoActiveOrPending);
        }
        Ok(Keyring { version: 1, keys })
    }

    /// The document as pretty JSON, ready for a file or a Secret.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a keyring always serialises") + "\n"
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key signers must use; `None` while the keyring is [starting](Keyring::is_starting).
    pub fn active(&self) -> Option<&Key> {
        self.keys.iter().find(|k| k.state == KeyState::Active)
    }

    /// Whether the keyring has no active key yet, only pending ones (spec §7.1): verifiers work, signers must not.
    pub fn is_starting(&self) -> bool {
        self.active().is_none()
    }

    /// The pending key that becomes active first: what a starting keyring waits for. One without `activate_after`
    /// may be promoted at once, so it counts as due since its creation.
    pub fn next_pending(&self) -> Option<&Key> {
        self.keys
            .iter()
            .filter(|k| k.state == KeyState::Pending)
            .min_by_key(|k| k.activate_after.unwrap_or(k.created_at))
    }

    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, state: KeyState) -> Key {
        let mut k = Key::new(kid.to_owned(), state, vec![7; MIN_SECRET_LEN], 100);
        match state {
            KeyState::Pending => k.activate_after = Some(160),
            KeyState::Active => k.activated_at = Some(100),
            KeyState::Retiring => k.accept_until = Some(200),
        }
        k
    }

    #[test]
    fn at_most_one_active_key_and_a_pending_one_without_it() {
        use KeyState::*;
        /// The active key's id, or the error's message.
        type Want = Result<Option<&'static str>, &'static str>;
        let cases: [(&[KeyState], Want); 8] = [
            (&[Active], Ok(Some("k0"))),
            (&[Pending, Active, Retiring], Ok(Some("k1"))),
            (&[Pending], Ok(None)),
            (&[Retiring, Pending], Ok(None)),
            (&[Active, Active], Err("the keyring has 2 active keys; it must have at most one")),
            (&[Retiring], Err("the keyring has no active and no pending key; nobody could ever sign with it")),
            (
                &[Retiring, Retiring],
                Err("the keyring has no active and no pending key; nobody could ever sign with it"),
            ),
            (&[], Err("the keyring has no keys")),
        ];
        for (states, want) in cases {
            let keys = states.iter().enumerate().map(|(i, s)| key(&format!("k{i}"), *s)).collect();
            let got = Keyring::from_keys(keys);
            match (&got, want) {
                (Ok(ring), Ok(active)) => {
                    assert_eq!(ring.active().map(Key::kid), active, "{states:?}");
                    assert_eq!(ring.is_starting(), active.is_none(), "{states:?}");
                }
                (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg, "{states:?}"),
                _ => panic!("{states:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_next_pending_key_is_the_one_due_first() {
        let mut late = key("late", KeyState::Pending);
        late.activate_after = Some(500);
        let ring = Keyring::from_keys(vec![late, key("soon", KeyState::Pending)]).unwrap();
        assert_eq!(ring.next_pending().map(Key::kid), Some("soon"));
    }
}
