//! Finding the token in a request (spec §5.3).

use std::borrow::Cow;

/// What the query string carries.
pub(crate) enum Found<'a> {
    /// A compact token from the `token` or `key` parameter.
    Token(Cow<'a, str>),
    /// Signed-URL query parameters.
    Params(Params<'a>),
}

/// Signed-URL parameters, each seen at most once.
#[derive(Default)]
pub(crate) struct Params<'a> {
    pub expires: Option<Cow<'a, str>>,
    pub nbf: Option<Cow<'a, str>>,
    pub prefix: Option<Cow<'a, str>>,
    pub ip: Option<Cow<'a, str>>,
    pub kid: Option<Cow<'a, str>>,
    pub signature: Option<Cow<'a, str>>,
}

/// `Err(())` means malformed: a parameter twice, or two carriers in the query at once.
pub(crate) fn from_query(query: &str) -> Result<Option<Found<'_>>, ()> {
    let mut token: Option<Cow<'_, str>> = None;
    let mut token_seen = false;
    let mut p = Params::default();
    let mut any_param = false;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match name.as_ref() {
            "token" | "key" => {
                if token_seen {
                    return Err(());
                }
                token_seen = true;
                &mut token
            }
            "expires" => &mut p.expires,
            "nbf" => &mut p.nbf,
            "prefix" => &mut p.prefix,
            "ip" => &mut p.ip,
            "kid" => &mut p.kid,
            "signature" => &mut p.signature,
            _ => continue,
        };
        if slot.is_some() {
            return Err(());
        }
        *slot = Some(value);
        any_param |= !matches!(name.as_ref(), "token" | "key");
    }
    if let Some(token) = token {
        if p.expires.is_some() || p.kid.is_some() || p.signature.is_some() {
            return Err(());
        }
        return Ok(Some(Found::Token(token)));
    }
    Ok(any_param.then_some(Found::Params(p)))
}

/// The token of an `Authorization: Bearer` header; other schemes are not ours.
pub(crate) fn from_authorization(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim_matches(' '))
}

/// Every `vd_token` value in the `Cookie` headers, in the order sent.
pub(crate) fn cookies<'a>(headers: &'a [&'a str]) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim_matches(' ').split_once('='))
        .filter(|(name, _)| *name == crate::COOKIE_NAME)
        .map(|(_, value)| value.trim_matches('"'))
}

/// A compact token carried as a path segment: `{route-prefix}/t/{token}/{object path}` (spec §5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCarrier<'a> {
    /// The compact token, exactly as it appears in the URL.
    pub token: &'a str,
    /// The raw request path with `/t/{token}` taken out: what the token is checked against and what is served.
    pub path: String,
}

/// Finds the path carrier in a raw request path. `route_prefix` is the agent's route prefix (`/videos`, or `""`
/// for the root); a trailing `/` on it is ignored. `None` means the path does not use this carrier.
pub fn split_path_carrier<'a>(raw_path: &'a str, route_prefix: &str) -> Option<PathCarrier<'a>> {
    let prefix = route_prefix.trim_end_matches('/');
    let rest = raw_path.strip_prefix(prefix)?.strip_prefix("/t/")?;
    let (token, object) = rest.split_once('/').unwrap_or((rest, ""));
    Some(PathCarrier { token, path: format!("{prefix}/{object}") })
}
