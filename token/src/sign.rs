//! Signing (spec §4, §5): what backends, `vdctl` and tests use to mint URLs.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;

use crate::claims::{Claims, HmacSha256, Scope};
use crate::ip::IpRange;
use crate::keyring::Keyring;
use crate::path::{PathError, PathKind, check_canonical, encode_path};

/// How the claims travel in the URL a signer returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Carrier {
    /// `?expires=…&kid=…&signature=…` (spec §5.1).
    #[default]
    Query,
    /// `?token=v1.…` (spec §5.2).
    Token,
}

/// A URL to mint.
#[derive(Debug, Clone)]
pub struct UrlRequest<'a> {
    /// Scheme and authority, for example `https://media.example.com`; a trailing `/` is ignored.
    pub base_url: &'a str,
    /// The canonical (decoded) path the URL points to, e.g. `/videos/café.mp4`: what the object is called,
    /// not how a URL spells it. The signer percent-encodes it.
    pub path: &'a str,
    pub exp: u64,
    pub nbf: Option<u64>,
    /// A canonical prefix scope ending in `/`; `None` scopes the token to `path` alone.
    pub prefix: Option<&'a str>,
    pub ip: Option<IpRange>,
    pub carrier: Carrier,
}

/// Why a URL could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("invalid path: {0}")]
    Path(PathError),
    #[error("invalid prefix: {0}")]
    Prefix(PathError),
    #[error("the path is not under the prefix")]
    OutsidePrefix,
    #[error("not-before is after the expiry")]
    NotBeforeAfterExpiry,
    #[error("the expiry does not fit in 11 digits")]
    ExpiryTooLarge,
    #[error("the path carrier needs a prefix token: give a prefix")]
    PathCarrierNeedsPrefix,
    #[error("the path is not under the route prefix {0:?}")]
    OutsideRoutePrefix(String),
    /// The keyring is starting (spec §7.2): its pending key may not have reached every agent yet.
    #[error(
        "the keyring has no active key yet: key {kid:?} becomes active at Unix time {activate_after}; nothing can be signed before then"
    )]
    NotYetActive { kid: String, activate_after: u64 },
}

/// Signs with a keyring's active key, the only key a signer may use (spec §7.2).
pub struct Signer {
    kid: String,
    mac: HmacSha256,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for the keyring's active key. A starting keyring has none: signing with its pending key would mint
    /// URLs that agents refuse until they load it, so this fails and says when the key becomes active.
    pub fn new(keyring: &Keyring) -> Result<Signer, SignError> {
        if let Some(key) = keyring.active() {
            return Ok(Signer::with_key(key.kid(), key.secret_bytes()));
        }
        // A valid keyring without an active key has a pending one.
        let pending = keyring.next_pending().expect("a starting keyring has a pending key");
        Err(SignError::NotYetActive {
            kid: pending.kid().to_owned(),
            activate_after: pending.activate_after().unwrap_or(pending.created_at()),
        })
    }

    /// A signer for one explicit key, for tests and vectors; production code uses [`Signer::new`].
    pub fn with_key(kid: &str, secret: &[u8]) -> Signer {
        let mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        Signer { kid: kid.to_owned(), mac }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signature of a set of claims, base64url (43 characters).
    pub fn signature(&self, claims: &Claims) -> String {
        URL_SAFE_NO_PAD.encode(claims.mac(&self.mac))
    }

    /// The compact token for a set of claims.
    pub fn token(&self, claims: &Claims) -> String {
        let text = claims.claims_text();
        format!("v1.{}.{}", URL_SAFE_NO_PAD.encode(text.as_bytes()), self.signature(claims))
    }

    /// Claims for a request, with this signer's key id and everything canonicalised.
    pub fn claims(&self, req: &UrlRequest<'_>) -> Result<Claims, SignError> {
        check_canonical(req.path, PathKind::Path).map_err(SignError::Path)?;
        let scope = match req.prefix {
            Some(prefix) => {
                check_canonical(prefix, PathKind::Prefix).map_err(SignError::Prefix)?;
                if !req.path.starts_with(prefix) {
                    return Err(SignError::OutsidePrefix);
                }
                Scope::Prefix(prefix.to_owned())
            }
            None => Scope::Path(req.path.to_owned()),
        };
        if req.exp > 99_999_999_999 {
            return Err(SignError::ExpiryTooLarge);
        }
        if req.nbf.is_some_and(|nbf| nbf > req.exp) {
            return Err(SignError::NotBeforeAfterExpiry);
        }
        Ok(Claims { kid: self.kid.clone(), exp: req.exp, nbf: req.nbf, scope, ip: req.ip, via: None })
    }

    /// A complete signed URL, byte for byte what every conforming signer produces.
    pub fn url(&self, req: &UrlRequest<'_>) -> Result<String, SignError> {
        let claims = self.claims(req)?;
        let mut query = form_urlencoded::Serializer::new(String::new());
        match req.carrier {
            Carrier::Token => {
                query.append_pair("token", &self.token(&claims));
            }
            Carrier::Query => {
                query.append_pair("expires", &claims.exp.to_string());
                if let Some(nbf) = claims.nbf {
                    query.append_pair("nbf", &nbf.to_string());
                }
                if let Scope::Prefix(prefix) = &claims.scope {
                    query.append_pair("prefix", prefix);
                }
                if let Some(ip) = &claims.ip {
                    query.append_pair("ip", &ip.to_string());
                }
                query.append_pair("kid", &claims.kid);
                query.append_pair("signature", &self.signature(&claims));
            }
        }
        Ok(format!("{}{}?{}", req.base_url.trim_end_matches('/'), encode_path(req.path), query.finish()))
    }

    /// A URL with the token as a path segment, `{route-prefix}/t/{token}/{rest}` (spec §5.4), so that relative
    /// URIs in a playlist inherit it. Needs a prefix scope; `req.carrier` is not used.
    pub fn path_url(&self, req: &UrlRequest<'_>, route_prefix: &str) -> Result<String, SignError> {
        if req.prefix.is_none() {
            return Err(SignError::PathCarrierNeedsPrefix);
        }
        let route = route_prefix.trim_end_matches('/');
        let rest = req
            .path
            .strip_prefix(route)
            .filter(|rest| rest.starts_with('/'))
            .ok_or_else(|| SignError::OutsideRoutePrefix(route.to_owned()))?;
        let claims = self.claims(req)?;
        Ok(format!(
            "{}{}/t/{}{}",
            req.base_url.trim_end_matches('/'),
            encode_path(route),
            self.token(&claims),
            encode_path(rest)
        ))
    }
}
