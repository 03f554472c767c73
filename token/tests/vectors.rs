//! Every vector of `testdata/token-vectors.json`, the file the TypeScript package is checked against too.

use std::net::IpAddr;

use serde_json::Value;
use vd_token::{
    Claims, IpRange, Keyring, PathKind, Policy, Reason, RequestAuth, Scope, SignError, Signer, Verifier, Via,
    canonical_path, canonical_prefix, encode_path,
};

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/token-vectors.json"))
        .expect("testdata/token-vectors.json is readable");
    serde_json::from_str(&text).expect("vectors are JSON")
}

fn keyring(v: &Value) -> Keyring {
    Keyring::from_json(v["keyring"].to_string().as_bytes()).expect("the vectors' keyring is valid")
}

fn policy(v: &Value) -> Policy {
    Policy {
        max_lifetime: v["policy"]["max_lifetime"].as_u64().unwrap(),
        clock_skew: v["policy"]["clock_skew"].as_u64().unwrap(),
    }
}

fn s(v: &Value) -> &str {
    v.as_str().expect("a string")
}

#[test]
fn path_vectors() {
    let v = vectors();
    let paths = v["paths"].as_array().unwrap();
    assert!(paths.len() >= 20);
    for case in paths {
        let raw = s(&case["raw"]);
        let got = match s(&case["kind"]) {
            "prefix" => canonical_prefix(raw),
            _ => canonical_path(raw),
        };
        match case.get("canonical") {
            Some(want) => assert_eq!(got.as_deref(), Ok(s(want)), "{}", case["name"]),
            None => assert!(got.is_err(), "{}: {raw:?} must be refused, got {got:?}", case["name"]),
        }
    }
}

#[test]
fn ip_range_vectors() {
    let v = vectors();
    for case in v["ip_ranges"].as_array().unwrap() {
        let got = IpRange::parse_lenient(s(&case["input"])).map(|r| r.to_string());
        match case.get("canonical") {
            Some(want) => {
                assert_eq!(got.as_deref(), Ok(s(want)), "{}", case["input"]);
                assert!(IpRange::parse_canonical(s(want)).is_ok(), "canonical form re-parses: {want}");
            }
            None => assert!(got.is_err(), "{} must be refused", case["input"]),
        }
    }
}

fn claims_of(c: &Value) -> Claims {
    let scope = c["scope"]["path"].as_str().unwrap().to_owned();
    Claims {
        kid: s(&c["kid"]).to_owned(),
        exp: c["exp"].as_u64().unwrap(),
        nbf: c.get("nbf").and_then(Value::as_u64),
        scope: if c["scope"]["kind"] == "prefix" { Scope::Prefix(scope) } else { Scope::Path(scope) },
        ip: c.get("ip").map(|ip| IpRange::parse_canonical(s(ip)).unwrap()),
        via: c.get("via").map(|via| match s(via) {
            "manifest" => Via::Manifest,
            "session" => Via::Session,
            other => panic!("unknown via {other:?}"),
        }),
    }
}

#[test]
fn sign_vectors() {
    let v = vectors();
    let ring = keyring(&v);
    let base = s(&v["base_url"]);
    let mut path_urls = 0;
    let mut derived = std::collections::BTreeSet::new();
    for case in v["sign"].as_array().unwrap() {
        let name = &case["name"];
        let claims = claims_of(&case["claims"]);
        let key = ring.get(&claims.kid).unwrap();
        let signer = Signer::with_key(key.kid(), key.secret_bytes());
        assert_eq!(claims.signing_input(), s(&case["signing_input"]), "{name}");
        assert_eq!(claims.claims_text(), s(&case["signing_input"]).strip_prefix("VD1\n").unwrap(), "{name}");
        assert_eq!(signer.signature(&claims), s(&case["signature"]), "{name}");
        assert_eq!(signer.token(&claims), s(&case["token"]), "{name}");

        if let Some(via) = claims.via {
            // Only agents mint `via`, and only as compact tokens: the vector has no URL forms (spec §5.1, §5.5, §5.6).
            assert!(case.get("url").is_none() && case.get("token_url").is_none() && case.get("path_url").is_none());
            derived.insert(via.as_str());
            continue;
        }

        let prefix = match &claims.scope {
            Scope::Prefix(p) => Some(p.as_str()),
            Scope::Path(_) => None,
        };
        let path = s(&case["path"]);
        let req = |carrier| vd_token::UrlRequest {
            base_url: base,
            path,
            exp: claims.exp,
            nbf: claims.nbf,
            prefix,
            ip: claims.ip,
            carrier,
        };
        assert_eq!(signer.url(&req(vd_token::Carrier::Query)).unwrap(), s(&case["url"]), "{name}");
        assert_eq!(signer.url(&req(vd_token::Carrier::Token)).unwrap(), s(&case["token_url"]), "{name}");
        match case.get("path_url") {
            Some(url) => {
                let got = signer.path_url(&req(vd_token::Carrier::Query), s(&v["route_prefix"])).unwrap();
                assert_eq!(got, s(url), "{name}");
                path_urls += 1;
            }
            None => assert_eq!(
                signer.path_url(&req(vd_token::Carrier::Query), s(&v["route_prefix"])),
                Err(vd_token::SignError::PathCarrierNeedsPrefix),
                "{name}"
            ),
        }
        // The URL path is the encoded canonical path.
        assert!(s(&case["url"]).starts_with(&format!("{base}{}", encode_path(path))));
    }
    assert!(path_urls >= 2, "the path carrier needs sign vectors");
    assert_eq!(derived.into_iter().collect::<Vec<_>>(), ["manifest", "session"], "sign vectors cover both via values");
}

#[test]
fn verify_vectors() {
    let v = vectors();
    let verifier = Verifier::new(&keyring(&v), policy(&v));
    let cases = v["verify"].as_array().unwrap();
    assert!(cases.len() >= 40, "the spec asks for at least 40 vectors");
    let mut seen = std::collections::BTreeSet::new();
    let mut sessions = 0;
    for case in cases {
        let r = &case["request"];
        // A path carrier comes out of the raw path first; the rest is the request's path (spec §5.4).
        let carried = vd_token::split_path_carrier(s(&r["path"]), s(&v["route_prefix"]));
        let raw_path = carried.as_ref().map_or(s(&r["path"]), |c| c.path.as_str());
        let path = canonical_path(raw_path).expect("verify vectors use valid paths");
        let cookies: Vec<&str> =
            r.get("cookies").map(|c| c.as_array().unwrap().iter().map(s).collect()).unwrap_or_default();
        let client_ip: Option<IpAddr> = r.get("client_ip").map(|ip| s(ip).parse().unwrap());
        let req = RequestAuth {
            path: &path,
            query: r.get("query").map(s),
            authorization: r.get("authorization").map(s),
            cookies: &cookies,
            client_ip,
            path_token: carried.as_ref().map(|c| c.token),
        };
        let now = case["now"].as_u64().unwrap();
        // `"mode": "session"` is a session exchange (spec §5.5); absent, an ordinary request.
        let got = match case.get("mode").map_or("request", s) {
            "request" => verifier.verify(&req, now).map(drop),
            "session" => {
                sessions += 1;
                verifier.verify_session(&req, now).map(drop)
            }
            other => panic!("vector {:?}: unknown mode {other:?}", case["name"]),
        };
        let got = match got {
            Ok(()) => "valid",
            Err(reason) => reason.code(),
        };
        assert_eq!(got, s(&case["verdict"]), "vector {:?}", case["name"]);
        seen.insert(got);
    }
    let all = ["valid", "missing", "malformed", "unknown_kid", "bad_signature", "expired", "not_yet_valid"];
    let all = all.into_iter().chain(["lifetime_too_long", "wrong_scope", "wrong_ip", "derived_token"]);
    for verdict in all {
        assert!(seen.contains(verdict), "no vector covers {verdict}");
    }
    assert!(sessions >= 5, "the session exchange needs vectors");
    assert_eq!(Reason::DerivedToken.code(), "derived_token");
}

#[test]
fn keyring_vectors() {
    let v = vectors();
    for case in v["keyrings"].as_array().unwrap() {
        let got = Keyring::from_json(case["document"].to_string().as_bytes());
        assert_eq!(got.is_ok(), case["valid"].as_bool().unwrap(), "{}: {:?}", case["name"], got.err());
        let Ok(ring) = got else { continue };
        // What a signer built from it does (spec §7.2): sign with the active key, or refuse while starting.
        let want = &case["signs_with"];
        match Signer::new(&ring) {
            Ok(signer) => assert_eq!(signer.kid(), s(&want["kid"]), "{}", case["name"]),
            Err(SignError::NotYetActive { kid, activate_after }) => {
                assert_eq!(s(&want["error"]), "not_yet_active", "{}", case["name"]);
                assert_eq!(kid, s(&want["kid"]), "{}", case["name"]);
                assert_eq!(Some(activate_after), want["activate_after"].as_u64(), "{}", case["name"]);
            }
            Err(e) => panic!("{}: {e}", case["name"]),
        }
    }
}

#[test]
fn keyring_errors_never_show_secrets() {
    let v = vectors();
    for case in v["keyrings"].as_array().unwrap() {
        if let Err(e) = Keyring::from_json(case["document"].to_string().as_bytes()) {
            let msg = e.to_string();
            for key in case["document"]["keys"].as_array().unwrap() {
                let secret = s(&key["secret"]);
                assert!(secret.len() < 8 || !msg.contains(secret), "{msg}");
            }
        }
    }
    let ring = keyring(&v);
    let debug = format!("{ring:?}");
    for key in v["keyring"]["keys"].as_array().unwrap() {
        assert!(!debug.contains(s(&key["secret"])), "Debug output shows a secret");
    }
}

#[test]
fn path_kinds_differ() {
    assert_eq!(canonical_prefix("/videos/").as_deref(), Ok("/videos/"));
    assert!(canonical_path("/videos/").is_err());
    assert_eq!(PathKind::Path, PathKind::Path);
}
