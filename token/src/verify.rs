//! Verification (spec §6).

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
use subtle::ConstantTimeEq;

use crate::carrier::{self, Found, Params};
use crate::claims::{Claims, HmacSha256, Parsed, RawClaims};
use crate::ip::IpRange;
use crate::keyring::Keyring;
use crate::path::{MAX_PATH_LEN, PathKind};

/// Longest claims text a token may carry: kid, two times, the longest scope, an IPv6 range and the separators.
const MAX_CLAIMS_LEN: usize = 64 + 11 + 11 + 7 + MAX_PATH_LEN + 43 + 4 + "\nvia:manifest".len();

/// Verifier settings that bound what backends can mint, whatever a token claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Longest accepted lifetime, in seconds (spec §6, rule 7).
    pub max_lifetime: u64,
    /// Tolerated clock difference between signer and verifier, in seconds.
    pub clock_skew: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { max_lifetime: 86_400, clock_skew: 30 }
    }
}

/// Why a request was refused. `code()` is stable: it appears in responses and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reason {
    #[error("no token was presented")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token was signed with a key this server does not accept")]
    UnknownKid,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's lifetime is longer than this server allows")]
    LifetimeTooLong,
    #[error("the token does not cover this path")]
    WrongScope,
    #[error("the token is bound to another client address")]
    WrongIp,
    #[error("the token was minted by an agent and cannot be exchanged for a session")]
    DerivedToken,
}

impl Reason {
    /// Every reason, for metrics that should show zeros too.
    pub const ALL: [Reason; 10] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::UnknownKid,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::LifetimeTooLong,
        Reason::WrongScope,
        Reason::WrongIp,
        Reason::DerivedToken,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::UnknownKid => "unknown_kid",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::LifetimeTooLong => "lifetime_too_long",
            Reason::WrongScope => "wrong_scope",
            Reason::WrongIp => "wrong_ip",
            Reason::DerivedToken => "derived_token",
        }
    }
}

/// What a request carries that may hold a token.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestAuth<'a> {
    /// The request's canonical path (see [`crate::canonical_path`]).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// Each `Cookie` header (HTTP/2 may split cookies over several).
    pub cookies: &'a [&'a str],
    /// The client's address, if known.
    pub client_ip: Option<IpAddr>,
    /// A token found in the URL path (see [`crate::split_path_carrier`]); `path` is then the path without it.
    pub path_token: Option<&'a str>,
}

/// Where the token that authorized a request travelled. A token in the URL makes the URL itself the grant, so a
/// shared cache keyed on the URL can keep the answer; a header or cookie does not, so such answers are private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The path carrier (spec §5.4).
    Path,
    /// A query carrier: `token`/`key` or signed-URL parameters (spec §5.1, §5.2).
    Query,
    /// `Authorization: Bearer`.
    Header,
    /// The `vd_token` cookie.
    Cookie,
}

impl Source {
    /// Whether the grant is part of the URL.
    pub fn in_url(self) -> bool {
        matches!(self, Source::Path | Source::Query)
    }
}

/// A request that may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant<'v> {
    /// The key that signed the token.
    pub kid: &'v str,
    /// When the token expires.
    pub exp: u64,
    /// Whether the token opens a whole prefix.
    pub prefix: bool,
    /// The carrier the token came in.
    pub source: Source,
}

/// Which scope rule applies (spec §6 rule 8, §5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The request's path must be in scope.
    Request,
    /// A session exchange: the token must be a prefix token; the request's path is not compared.
    Session,
}

struct VerifyKey {
    kid: String,
    /// The key's HMAC state after absorbing the key, cloned per token so the key is hashed only once.
    mac: HmacSha256,
    accept_until: Option<u64>,
}

/// Checks tokens against a keyring. Build one per keyring version and share it.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    policy: Policy,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("Verifier").field("kids", &kids).field("policy", &self.policy).finish()
    }
}

impl Verifier {
    pub fn new(keyring: &Keyring, policy: Policy) -> Verifier {
        let keys = keyring
            .keys()
            .iter()
            .map(|k| VerifyKey {
                kid: k.kid().to_owned(),
                mac: HmacSha256::new_from_slice(k.secret_bytes()).expect("HMAC takes keys of any length"),
                accept_until: match k.state() {
                    crate::KeyState::Retiring => k.accept_until(),
                    _ => None,
                },
            })
            .collect();
        Verifier { keys, policy }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The verdict for one request at `now` (Unix seconds): the first rule of spec §6 that applies.
    pub fn verify(&self, req: &RequestAuth<'_>, now: u64) -> Result<Grant<'_>, Reason> {
        self.run(req, now, Mode::Request, None)
    }

    /// The same verdict as [`Verifier::verify`], and on success the token's claims, for minting tokens derived
    /// from it (rewritten playlists), and the carrier it came in. Allocates; the plain `verify` is the hot path.
    pub fn verify_claims(&self, req: &RequestAuth<'_>, now: u64) -> Result<(Claims, Source), Reason> {
        let mut out = None;
        let grant = self.run(req, now, Mode::Request, Some(&mut out))?;
        Ok((out.ok_or(Reason::Malformed)?, grant.source))
    }

    /// A session exchange (spec §5.5): every rule of §6 except that, instead of comparing the request's path,
    /// the token must have a prefix scope (else `wrong_scope`) and must not be one an agent minted (else
    /// `derived_token`), so no session can renew itself. Returns the token's claims.
    pub fn verify_session(&self, req: &RequestAuth<'_>, now: u64) -> Result<Claims, Reason> {
        let mut out = None;
        self.run(req, now, Mode::Session, Some(&mut out))?;
        out.ok_or(Reason::Malformed)
    }

    fn run(&self, req: &RequestAuth<'_>, now: u64, mode: Mode, out: Out<'_>) -> Result<Grant<'_>, Reason> {
        let ctx = Ctx { req, now, mode, source: Source::Path };
        if let Some(token) = req.path_token {
            // One carrier per request: a path token with a query token or signed-URL parameters is ambiguous.
            if let Some(query) = req.query
                && carrier::from_query(query).map_err(|()| Reason::Malformed)?.is_some()
            {
                return Err(Reason::Malformed);
            }
            return self.check_token(token, &ctx, true, out);
        }
        if let Some(query) = req.query {
            match carrier::from_query(query).map_err(|()| Reason::Malformed)? {
                Some(Found::Token(token)) => {
                    return self.check_token(&token, &Ctx { source: Source::Query, ..ctx }, false, out);
                }
                Some(Found::Params(params)) => {
                    return self.check_params(&params, &Ctx { source: Source::Query, ..ctx }, out);
                }
                None => {}
            }
        }
        if let Some(token) = req.authorization.and_then(carrier::from_authorization) {
            return self.check_token(token, &Ctx { source: Source::Header, ..ctx }, false, out);
        }
        let ctx = Ctx { source: Source::Cookie, ..ctx };
        let mut first = None;
        let mut out = out;
        for token in carrier::cookies(req.cookies) {
            match self.check_token(token, &ctx, false, out.as_deref_mut()) {
                Ok(grant) => return Ok(grant),
                Err(reason) => {
                    first.get_or_insert(reason);
                }
            }
        }
        Err(first.unwrap_or(Reason::Missing))
    }

    fn check_token(&self, token: &str, ctx: &Ctx<'_>, prefix_only: bool, out: Out<'_>) -> Result<Grant<'_>, Reason> {
        let body = token.strip_prefix(crate::TOKEN_PREFIX).ok_or(Reason::Malformed)?;
        let (claims_b64, sig_b64) = body.split_once('.').ok_or(Reason::Malformed)?;
        if sig_b64.len() != 43 || claims_b64.len() > MAX_CLAIMS_LEN.div_ceil(3) * 4 {
            return Err(Reason::Malformed);
        }
        let signature = decode_signature(sig_b64)?;
        let mut buf = [0u8; MAX_CLAIMS_LEN + 3];
        let n = URL_SAFE_NO_PAD.decode_slice(claims_b64, &mut buf).map_err(|_| Reason::Malformed)?;
        let text = std::str::from_utf8(&buf[..n]).map_err(|_| Reason::Malformed)?;
        let claims = RawClaims::from_text(text).and_then(RawClaims::parse).ok_or(Reason::Malformed)?;
        // The path carrier exists so that relative URIs inherit the token: only a prefix token can open them.
        if prefix_only && claims.raw.scope_kind != PathKind::Prefix {
            return Err(Reason::Malformed);
        }
        self.check(&claims, &signature, ctx, out)
    }

    fn check_params(&self, p: &Params<'_>, ctx: &Ctx<'_>, out: Out<'_>) -> Result<Grant<'_>, Reason> {
        let (Some(exp), Some(kid), Some(sig)) = (&p.expires, &p.kid, &p.signature) else {
            return Err(Reason::Malformed);
        };
        let signature = decode_signature(sig)?;
        let (scope_kind, scope) = match &p.prefix {
            Some(prefix) => (PathKind::Prefix, prefix.as_ref()),
            None => (PathKind::Path, ctx.req.path),
        };
        let raw = RawClaims {
            kid,
            exp,
            nbf: p.nbf.as_deref().unwrap_or(""),
            scope_kind,
            scope,
            ip: p.ip.as_deref().unwrap_or(""),
            via: None,
        };
        // An explicitly empty `nbf=` or `ip=` would sign the same text as an absent one: refuse it.
        if p.nbf.as_deref() == Some("") || p.ip.as_deref() == Some("") {
            return Err(Reason::Malformed);
        }
        let claims = raw.parse().ok_or(Reason::Malformed)?;
        self.check(&claims, &signature, ctx, out)
    }

    fn check(&self, c: &Parsed<'_>, signature: &[u8; 32], ctx: &Ctx<'_>, out: Out<'_>) -> Result<Grant<'_>, Reason> {
        let (req, now) = (ctx.req, ctx.now);
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == c.raw.kid && k.accept_until.is_none_or(|until| now <= until))
            .ok_or(Reason::UnknownKid)?;
        let mut mac = key.mac.clone();
        c.raw.feed(&mut mac);
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        if !bool::from(expected.ct_eq(signature)) {
            return Err(Reason::BadSignature);
        }
        let Policy { max_lifetime, clock_skew: skew } = self.policy;
        if now > c.exp.saturating_add(skew) {
            return Err(Reason::Expired);
        }
        if c.nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
            return Err(Reason::NotYetValid);
        }
        let start = c.nbf.unwrap_or(now);
        if c.exp.saturating_sub(start) > max_lifetime.saturating_add(skew) {
            return Err(Reason::LifetimeTooLong);
        }
        let in_scope = match (ctx.mode, c.raw.scope_kind) {
            (Mode::Session, kind) => kind == PathKind::Prefix,
            (Mode::Request, PathKind::Path) => req.path == c.raw.scope,
            (Mode::Request, PathKind::Prefix) => req.path.starts_with(c.raw.scope),
        };
        if !in_scope {
            return Err(Reason::WrongScope);
        }
        if ctx.mode == Mode::Session && c.raw.via.is_some() {
            return Err(Reason::DerivedToken);
        }
        if let Some(range) = c.ip
            && !req.client_ip.is_some_and(|ip| IpRange::contains(&range, ip))
        {
            return Err(Reason::WrongIp);
        }
        if let Some(out) = out {
            *out = Some(c.to_claims());
        }
        Ok(Grant { kid: &key.kid, exp: c.exp, prefix: c.raw.scope_kind == PathKind::Prefix, source: ctx.source })
    }
}

/// Where [`Verifier::verify_claims`] wants the verified claims.
type Out<'o> = Option<&'o mut Option<Claims>>;

/// One verification's inputs.
#[derive(Clone, Copy)]
struct Ctx<'r> {
    req: &'r RequestAuth<'r>,
    now: u64,
    mode: Mode,
    source: Source,
}

fn decode_signature(text: &str) -> Result<[u8; 32], Reason> {
    let mut out = [0u8; 34];
    match URL_SAFE_NO_PAD.decode_slice(text, &mut out) {
        Ok(32) if text.len() == 43 => Ok(out[..32].try_into().map_err(|_| Reason::Malformed)?),
        _ => Err(Reason::Malformed),
    }
}
