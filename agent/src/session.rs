//! `POST {route-prefix}/session` (spec §5.5): trades a backend's prefix token for an `HttpOnly` cookie scoped to
//! its prefix, so a long viewing never meets an expired URL.
//!
//! The cookie's token is marked `via: session` and the exchange refuses marked tokens, so neither a session nor a
//! token from a rewritten manifest can mint another session: a grant's access ends at most one session lifetime
//! after the grant itself expires. Only `POST` mints one, and only from this origin or a listed one.

use std::net::IpAddr;

use http::header;
use http::{Request, Response, StatusCode};
use vd_token::{Claims, Reason, Scope, Via};

use crate::conditional::unix_now;
use crate::cors;
use crate::refusal::{Refusal, json_value, set};
use crate::server::{Body, State, request_auth, request_host};

pub fn exchange<B>(state: &State, req: &Request<B>, client: IpAddr) -> Result<Response<Body>, Refusal> {
    if !cors::may_mint_credentials(&state.config, req.headers(), request_host(req)) {
        return Err(Refusal::CrossSite);
    }
    let verifier = state.auth.verifier().ok_or(Refusal::NoKeyring)?;
    let signer = state.auth.signer().ok_or(Refusal::NoActiveKey)?;
    let cookies = crate::server::cookies(req);
    let auth = request_auth(req, req.uri().path(), None, client, &cookies);
    let now = unix_now();
    let presented = verifier.verify_session(&auth, now).map_err(Refusal::Token)?;
    let Scope::Prefix(prefix) = presented.scope else {
        return Err(Refusal::Token(Reason::WrongScope));
    };
    let ttl = state.config.session_ttl.as_secs();
    let claims = Claims {
        kid: signer.kid().to_owned(),
        exp: now.min(presented.exp) + ttl,
        nbf: None,
        scope: Scope::Prefix(prefix.clone()),
        ip: presented.ip,
        via: Some(Via::Session),
    };
    let cfg = &state.config;
    let cookie = format!(
        "{}={}; Path={}; Max-Age={}; HttpOnly{}; SameSite={}",
        vd_token::COOKIE_NAME,
        signer.token(&claims),
        vd_token::encode_path(&prefix),
        claims.exp.saturating_sub(now),
        match (cfg.session_cookie_insecure, cfg.session_cookie_partitioned) {
            (true, _) => "",
            (false, false) => "; Secure",
            // Partitioned needs Secure.
            (false, true) => "; Secure; Partitioned",
        },
        cfg.session_cookie_same_site.as_str(),
    );
    let mut r = json_value(StatusCode::OK, &serde_json::json!({ "prefix": prefix, "expires": claims.exp }));
    set(r.headers_mut(), header::SET_COOKIE, &cookie);
    Ok(r)
}
