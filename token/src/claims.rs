//! Claims and their canonical text (spec §2 and §4).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ip::IpRange;
use crate::path::{PathKind, check_canonical};

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// What a token opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Exactly this canonical path.
    Path(String),
    /// Every path under this canonical prefix (ends in `/`).
    Prefix(String),
}

/// Marks a token an agent minted from another one (spec §2): such a token never opens a session, so a grant can
/// never renew itself through the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// Appended to the URIs of a rewritten manifest (spec §5.6).
    Manifest,
    /// Set as the session cookie (spec §5.5).
    Session,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Manifest => "manifest",
            Via::Session => "session",
        }
    }

    fn parse(line: &str) -> Option<Via> {
        match line {
            "via:manifest" => Some(Via::Manifest),
            "via:session" => Some(Via::Session),
            _ => None,
        }
    }
}

/// Everything a token says, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub kid: String,
    pub exp: u64,
    pub nbf: Option<u64>,
    pub scope: Scope,
    pub ip: Option<IpRange>,
    /// Set only by agents, on tokens they derive; backends never mint it.
    pub via: Option<Via>,
}

impl Claims {
    /// The claims text: the signing input without its version line, and the payload of a compact token.
    pub fn claims_text(&self) -> String {
        let mut text = String::with_capacity(96);
        fmt::write(&mut text, format_args!("{self}")).expect("writing to a String cannot fail");
        text
    }

    /// The exact bytes the MAC covers, as a string.
    pub fn signing_input(&self) -> String {
        format!("VD1\n{self}")
    }

    pub(crate) fn mac(&self, key: &HmacSha256) -> [u8; 32] {
        let mut mac = key.clone();
        mac.update(crate::SIGNING_TAG);
        mac.update(self.claims_text().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Display for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n{}\n", self.kid, self.exp)?;
        if let Some(nbf) = self.nbf {
            write!(f, "{nbf}")?;
        }
        match &self.scope {
            Scope::Path(p) => write!(f, "\npath:{p}\n")?,
            Scope::Prefix(p) => write!(f, "\nprefix:{p}\n")?,
        }
        if let Some(ip) = &self.ip {
            write!(f, "{ip}")?;
        }
        if let Some(via) = self.via {
            write!(f, "\nvia:{}", via.as_str())?;
        }
        Ok(())
    }
}

/// Claims borrowed from a token or from query parameters, validated but not yet authenticated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawClaims<'a> {
    pub kid: &'a str,
    pub exp: &'a str,
    pub nbf: &'a str,
    /// `path` or `prefix`.
    pub scope_kind: PathKind,
    pub scope: &'a str,
    pub ip: &'a str,
    /// The optional sixth line; only compact tokens can carry it.
    pub via: Option<Via>,
}

/// Claims after parsing, with numbers and the address range decoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parsed<'a> {
    pub raw: RawClaims<'a>,
    pub exp: u64,
    pub nbf: Option<u64>,
    pub ip: Option<IpRange>,
}

impl<'a> RawClaims<'a> {
    /// Parses the five lines of a compact token's claims text.
    pub fn from_text(text: &'a str) -> Option<Self> {
        let mut lines = text.split('\n');
        let kid = lines.next()?;
        let exp = lines.next()?;
        let nbf = lines.next()?;
        let scope = lines.next()?;
        let ip = lines.next()?;
        let via = match lines.next() {
            None => None,
            Some(line) => Some(Via::parse(line)?),
        };
        if lines.next().is_some() {
            return None;
        }
        let (scope_kind, scope) = if let Some(p) = scope.strip_prefix("path:") {
            (PathKind::Path, p)
        } else if let Some(p) = scope.strip_prefix("prefix:") {
            (PathKind::Prefix, p)
        } else {
            return None;
        };
        Some(RawClaims { kid, exp, nbf, scope_kind, scope, ip, via })
    }

    /// Checks every claim is in canonical form; `None` means malformed.
    pub fn parse(self) -> Option<Parsed<'a>> {
        if !valid_kid(self.kid) {
            return None;
        }
        let exp = parse_time(self.exp)?;
        let nbf = if self.nbf.is_empty() { None } else { Some(parse_time(self.nbf)?) };
        if nbf.is_some_and(|n| n > exp) {
            return None;
        }
        check_canonical(self.scope, self.scope_kind).ok()?;
        let ip = if self.ip.is_empty() { None } else { Some(IpRange::parse_canonical(self.ip).ok()?) };
        Some(Parsed { raw: self, exp, nbf, ip })
    }

    /// Feeds the signing input into a MAC without building it in memory.
    pub fn feed(&self, mac: &mut HmacSha256) {
        mac.update(crate::SIGNING_TAG);
        for part in [self.kid, "\n", self.exp, "\n", self.nbf, "\n"] {
            mac.update(part.as_bytes());
        }
        mac.update(match self.scope_kind {
            PathKind::Path => b"path:",
            PathKind::Prefix => b"prefix:",
        });
        for part in [self.scope, "\n", self.ip] {
            mac.update(part.as_bytes());
        }
        if let Some(via) = self.via {
            mac.update(b"\nvia:");
            mac.update(via.as_str().as_bytes());
        }
    }
}

impl Parsed<'_> {
    /// Owned claims, for a caller that mints tokens derived from this one.
    pub fn to_claims(self) -> Claims {
        let scope = match self.raw.scope_kind {
            PathKind::Path => Scope::Path(self.raw.scope.to_owned()),
            PathKind::Prefix => Scope::Prefix(self.raw.scope.to_owned()),
        };
        Claims { kid: self.raw.kid.to_owned(), exp: self.exp, nbf: self.nbf, scope, ip: self.ip, via: self.raw.via }
    }
}

/// Key ids: 1–64 of `A–Z a–z 0–9 _ -` (spec §2).
pub(crate) fn valid_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len()) && kid.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Times: `0` or 1–11 digits without a leading zero or a sign.
pub(crate) fn parse_time(s: &str) -> Option<u64> {
    let ok = (1..=11).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if ok { s.parse().ok() } else { None }
}
