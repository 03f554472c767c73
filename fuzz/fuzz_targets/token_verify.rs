//! Token verification (`vd_token::Verifier`) on arbitrary requests, and a sign/verify round trip.
//!
//! Input: a 12-byte control header, then text fields separated by `\n`: path, query, Authorization, cookies
//! (several `Cookie` headers separated by `\t`), path-carrier token. Header bytes:
//!   0: which fields are present (bit 0 query, 1 Authorization, 2 cookies, 3 path token, 4 client address,
//!      5 that address is IPv6)
//!   1-2: signed offset of `now` from the vectors' `now`, in units of 8 s
//!   3-6: the client address (IPv4, or the last 32 bits of 2001:db8::/96)
//!   7: round trip: bits 0-1 key, 2-4 carrier, 5 prefix scope, 6 not-before, 7 address binding
//!   8-9: round trip lifetime in seconds; 10: prefix depth, and where in the lifetime to verify; 11: the byte
//!   written over each byte of the token in the tamper check.
//!
//! Properties:
//! - `verify`, `verify_claims` and `verify_session` never panic, and agree with each other; a granted request is
//!   inside the granted token's scope and lifetime, and was signed with a key of the keyring.
//! - Claims built from the input (a key the keyring accepts, a canonical path) and signed with `vd_token::Signer`
//!   verify as valid, through every carrier, at a time inside their lifetime; a session exchange accepts exactly
//!   the prefix tokens; another path is refused.
//! - Replacing any one byte of the compact token never yields a token that verifies with other claims (in
//!   particular never one valid for a different scope). Each input changes the version, the claims' start, the
//!   separator, the signature's ends and a stride of positions it picks (byte 11), so inputs cover every byte.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use libfuzzer_sys::fuzz_target;
use vd_token::{
    Carrier, IpRange, Keyring, MAX_PATH_LEN, PathKind, Policy, Reason, RequestAuth, Scope, Signer, UrlRequest,
    Verifier, canonical_path, check_canonical, split_path_carrier,
};

const VECTORS: &str = include_str!("../../testdata/token-vectors.json");

struct Setup {
    keyring: Keyring,
    verifier: Verifier,
    policy: Policy,
    now: u64,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let v: serde_json::Value = serde_json::from_str(VECTORS).expect("token-vectors.json is JSON");
    let keyring = Keyring::from_json(v["keyring"].to_string().as_bytes()).expect("the vectors' keyring is valid");
    let policy = Policy {
        max_lifetime: v["policy"]["max_lifetime"].as_u64().expect("policy.max_lifetime"),
        clock_skew: v["policy"]["clock_skew"].as_u64().expect("policy.clock_skew"),
    };
    let verifier = Verifier::new(&keyring, policy);
    Setup { keyring, verifier, policy, now: v["now"].as_u64().expect("now") }
});

fuzz_target!(|data: &[u8]| {
    let s = &*SETUP;
    let (h, rest) = vd_fuzz::split_header::<12>(data);
    let text = vd_fuzz::text(rest);
    let mut fields = text.split('\n');
    let mut field = || fields.next().unwrap_or("");
    let (path, query, authorization, cookies, path_token) = (field(), field(), field(), field(), field());
    let cookies: Vec<&str> = if h[0] & 4 != 0 { cookies.split('\t').collect() } else { Vec::new() };
    let client_ip = (h[0] & 16 != 0).then(|| {
        let b = [h[3], h[4], h[5], h[6]];
        if h[0] & 32 != 0 {
            IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(u32::from_be_bytes(b))))
        } else {
            IpAddr::V4(Ipv4Addr::from(b))
        }
    });
    let offset = i64::from(i16::from_le_bytes([h[1], h[2]])) * 8;
    let now = s.now.saturating_add_signed(offset);

    let req = RequestAuth {
        path,
        query: (h[0] & 1 != 0).then_some(query),
        authorization: (h[0] & 2 != 0).then_some(authorization),
        cookies: &cookies,
        client_ip,
        path_token: (h[0] & 8 != 0).then_some(path_token),
    };
    arbitrary_request(s, &req, now);
    round_trip(s, &h, path, client_ip, now);
});

/// Whatever the request, the verdicts agree and a grant is never wider than its token.
fn arbitrary_request(s: &Setup, req: &RequestAuth<'_>, now: u64) {
    let verdict = s.verifier.verify(req, now);
    let with_claims = s.verifier.verify_claims(req, now);
    match (&verdict, &with_claims) {
        (Ok(g), Ok((c, _))) => {
            assert_eq!((g.kid, g.exp, g.prefix), (c.kid.as_str(), c.exp, matches!(c.scope, Scope::Prefix(_))));
            assert!(s.keyring.get(g.kid).is_some_and(|k| k.accepted_at(now)), "granted with key {:?}", g.kid);
            assert!(now <= g.exp.saturating_add(s.policy.clock_skew), "granted after expiry");
            match &c.scope {
                Scope::Path(p) => assert_eq!(p, req.path, "granted a path token for another path"),
                Scope::Prefix(p) => assert!(req.path.starts_with(p.as_str()), "granted {:?} outside {p:?}", req.path),
            }
            if let Some(range) = c.ip {
                assert!(req.client_ip.is_some_and(|ip| range.contains(ip)), "granted outside the bound addresses");
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "verify and verify_claims disagree"),
        _ => panic!("verify {verdict:?} but verify_claims {with_claims:?}"),
    }
    if let Ok(c) = s.verifier.verify_session(req, now) {
        assert!(matches!(c.scope, Scope::Prefix(_)), "a session from a path token: {c:?}");
        assert!(now <= c.exp.saturating_add(s.policy.clock_skew), "a session after expiry");
    }
}

/// A canonical path made from the input: the input itself when it is one, else its usable segments.
fn canonical_from(input: &str) -> String {
    if let Ok(p) = canonical_path(input) {
        return p.into_owned();
    }
    let mut p = String::new();
    for seg in input.split('/') {
        let seg: String = seg.chars().filter(|c| !c.is_control() && *c != '\\').collect();
        if !seg.is_empty() && seg != "." && seg != ".." {
            p.push('/');
            p.push_str(&seg);
        }
    }
    while p.len() > MAX_PATH_LEN {
        p.pop();
    }
    if check_canonical(&p, PathKind::Path).is_err() { "/v".to_owned() } else { p }
}

fn round_trip(s: &Setup, h: &[u8; 12], input_path: &str, client_ip: Option<IpAddr>, now: u64) {
    let path = canonical_from(input_path);
    let knobs = h[7];
    // A canonical prefix of the path: up to one of its slashes.
    let prefix = (knobs & 32 != 0).then(|| {
        let slashes: Vec<usize> = path.match_indices('/').map(|(i, _)| i).collect();
        path[..=slashes[usize::from(h[10]) % slashes.len()]].to_owned()
    });
    let lifetime = 1 + u64::from(u16::from_le_bytes([h[8], h[9]])) % s.policy.max_lifetime;
    let nbf = (knobs & 64 != 0).then(|| now.saturating_sub(u64::from(h[10])));
    let exp = now + lifetime;
    // A moment inside the lifetime, where the token must verify.
    let start = nbf.unwrap_or(now);
    let at = start + u64::from(h[10]).saturating_mul(lifetime) / 255;
    let ip = match client_ip {
        Some(addr) if knobs & 128 != 0 => IpRange::parse_lenient(&addr.to_string()).ok(),
        _ => None,
    };
    let keys: Vec<_> = s.keyring.keys().iter().filter(|k| k.accepted_at(at)).collect();
    let key = keys[usize::from(knobs & 3) % keys.len()];
    let signer = Signer::with_key(key.kid(), key.secret_bytes());
    let url_req = UrlRequest {
        base_url: "https://media.example.com",
        path: &path,
        exp,
        nbf,
        prefix: prefix.as_deref(),
        ip,
        carrier: Carrier::Query,
    };
    let claims = signer.claims(&url_req).unwrap_or_else(|e| panic!("valid claims refused: {e} ({url_req:?})"));
    let token = signer.token(&claims);

    // Carry it the way the input asks.
    let query_token = format!("token={token}");
    let bearer = format!("Bearer {token}");
    let cookie = [format!("a=b; vd_token={token}")];
    let cookie: Vec<&str> = cookie.iter().map(String::as_str).collect();
    let url = signer.url(&url_req).expect("a signer makes URLs of claims it accepts");
    let (url_path, url_query) = url["https://media.example.com".len()..].split_once('?').expect("a query");
    assert_eq!(canonical_path(url_path).as_deref(), Ok(path.as_str()), "the signed URL's path is not the path");
    let path_url;
    let mut req = RequestAuth { path: &path, client_ip, ..RequestAuth::default() };
    match (knobs >> 2) % 5 {
        0 => req.query = Some(&query_token),
        1 => req.query = Some(url_query),
        2 => req.authorization = Some(&bearer),
        3 => req.cookies = &cookie,
        _ if prefix.is_some() => {
            path_url = signer.path_url(&url_req, "").expect("a path URL for a prefix token");
            let raw = &path_url["https://media.example.com".len()..];
            let carried = split_path_carrier(raw, "").expect("the path carrier is found");
            assert_eq!(carried.token, token, "the path carrier's token");
            assert_eq!(canonical_path(&carried.path).as_deref(), Ok(path.as_str()), "the path carrier's path");
            req.path_token = Some(carried.token);
        }
        _ => req.query = Some(&query_token),
    }
    let grant = s.verifier.verify(&req, at).unwrap_or_else(|r| panic!("a fresh token refused at {at}: {r:?}"));
    assert_eq!((grant.kid, grant.exp, grant.prefix), (key.kid(), exp, prefix.is_some()));
    match s.verifier.verify_session(&req, at) {
        Ok(c) => assert_eq!(c, claims, "a session exchange returned other claims"),
        Err(r) => assert!(prefix.is_none() && r == Reason::WrongScope, "session refused a prefix token: {r:?}"),
    }
    if prefix.as_deref() != Some("/") {
        let other = format!("{}x", prefix.as_deref().map_or(path.as_str(), |p| p.trim_end_matches('/')));
        let elsewhere = RequestAuth { path: &other, ..req };
        assert!(s.verifier.verify(&elsewhere, at).is_err(), "the token opened {other:?}, outside its scope");
    }

    tamper(s, &token, &claims, &path, client_ip, at, h[11]);
}

/// Every one-byte change of the token: nothing it verifies for may differ from what the token says.
fn tamper(s: &Setup, token: &str, claims: &vd_token::Claims, path: &str, client_ip: Option<IpAddr>, at: u64, fill: u8) {
    let lenient = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let in_scope = |p: &str| match &claims.scope {
        Scope::Path(s) => s == p,
        Scope::Prefix(s) => p.starts_with(s.as_str()),
    };
    let bytes = token.as_bytes();
    // Every position would cost a few thousand MACs per input; instead each input tries the places that matter
    // most (the version, the start of the claims, the separator, the ends of the signature) and a stride through
    // the rest that the input picks, so that across inputs every byte gets changed.
    let dot = token.rfind('.').unwrap_or(0);
    let stride = 5 + usize::from(fill % 13);
    let mut positions: Vec<usize> = [0, 1, 2, 3, 4, 5, dot - 2, dot - 1, dot, dot + 1, bytes.len() - 1].into();
    positions.extend((usize::from(fill) % stride..bytes.len()).step_by(stride));
    positions.sort_unstable();
    positions.dedup();
    for i in positions {
        for b in [fill & 0x7f, bytes[i] ^ 1] {
            if b == bytes[i] {
                continue;
            }
            let mut t = bytes.to_vec();
            t[i] = b;
            let Ok(t) = String::from_utf8(t) else { continue };
            // Where the tampered token claims to be valid: its own scope line, if it still decodes.
            let mut candidates = vec![path.to_owned()];
            if let Some(body) = t.strip_prefix("v1.")
                && let Some((c, _)) = body.split_once('.')
                && let Ok(text) = lenient.decode(c)
                && let Some(scope) = String::from_utf8_lossy(&text).split('\n').nth(3)
            {
                if let Some(p) = scope.strip_prefix("path:") {
                    candidates.push(p.to_owned());
                } else if let Some(p) = scope.strip_prefix("prefix:") {
                    candidates.push(format!("{p}x"));
                }
            }
            let bearer = format!("Bearer {t}");
            for p in &candidates {
                let req = RequestAuth { path: p, authorization: Some(&bearer), client_ip, ..RequestAuth::default() };
                if let Ok(g) = s.verifier.verify(&req, at) {
                    assert!(in_scope(p), "byte {i} changed to {b:#04x}: {t:?} opens {p:?}, outside {:?}", claims.scope);
                    assert_eq!((g.kid, g.exp), (claims.kid.as_str(), claims.exp), "byte {i}: {t:?} verifies");
                }
            }
            // A session exchange does not look at the path: once is enough.
            let req = RequestAuth { path, authorization: Some(&bearer), client_ip, ..RequestAuth::default() };
            if let Ok(c) = s.verifier.verify_session(&req, at) {
                assert_eq!(&c, claims, "byte {i} changed to {b:#04x}: {t:?} opens a session with other claims");
            }
        }
    }
}
