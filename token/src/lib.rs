//! VideoDelivery token format v1 (`docs/token-format.md`) and the signing keyring.
//!
//! Shared by the agent (verifies), the operator (rotates keys), `vdctl` and Rust backends (sign). It has no
//! async runtime and no Kubernetes dependency so that any of them can embed it.
//!
//! Verification of a valid token does not allocate on the heap unless a query value needs percent-decoding:
//! claims are decoded into a stack buffer and the MAC is fed piece by piece.

mod carrier;
mod claims;
pub mod duration;
mod ip;
mod keyring;
mod path;
pub mod rotation;
mod sign;
mod verify;

pub use carrier::{PathCarrier, split_path_carrier};
pub use claims::{Claims, Scope, Via};
pub use ip::{IpRange, IpRangeError};
pub use keyring::{Key, KeyState, Keyring, KeyringError, MAX_SECRET_LEN, MIN_SECRET_LEN};
pub use path::{MAX_PATH_LEN, PathError, PathKind, canonical_path, canonical_prefix, check_canonical, encode_path};
pub use sign::{Carrier, SignError, Signer, UrlRequest};
pub use verify::{Grant, Policy, Reason, RequestAuth, Source, Verifier};

/// Name of the cookie that carries a compact token (spec §5.2).
pub const COOKIE_NAME: &str = "vd_token";

/// Version tag that starts every signing input, so a later format can never share a MAC with this one.
const SIGNING_TAG: &[u8] = b"VD1\n";

/// Prefix of every compact token.
const TOKEN_PREFIX: &str = "v1.";
