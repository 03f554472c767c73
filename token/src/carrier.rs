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
