//! Changing any byte of a valid token's MAC, or any claim, is refused with the right reason.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use vd_token::{Claims, IpRange, Keyring, Policy, Reason, RequestAuth, Scope, Signer, Verifier, Via};

const NOW: u64 = 1_767_225_600;
const PATH: &str = "/videos/abc/master.m3u8";

fn setup() -> (Keyring, Signer, Verifier) {
    let doc = format!(
        r#"{{"version":1,"keys":[{{"kid":"k1","state":"active","secret":"{}","created_at":0,"activated_at":0}}]}}"#,
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    );
    let ring = Keyring::from_json(doc.as_bytes()).unwrap();
    let signer = Signer::new(&ring).unwrap();
    let verifier = Verifier::new(&ring, Policy::default());
    (ring, signer, verifier)
}

fn claims() -> Claims {
    Claims {
        kid: "k1".into(),
        exp: NOW + 600,
        nbf: Some(NOW - 60),
        scope: Scope::Prefix("/videos/abc/".into()),
        ip: Some(IpRange::parse_canonical("203.0.113.0/24").unwrap()),
        via: None,
    }
}

fn verify(verifier: &Verifier, token: &str) -> Result<(), Reason> {
    let query = format!("token={token}");
    let req = RequestAuth {
        path: PATH,
        query: Some(&query),
        client_ip: Some("203.0.113.9".parse().unwrap()),
        ..Default::default()
    };
    verifier.verify(&req, NOW).map(|_| ())
}

#[test]
fn valid_token_verifies() {
    let (_, signer, verifier) = setup();
    assert_eq!(verify(&verifier, &signer.token(&claims())), Ok(()));
}

#[test]
fn every_mac_byte_flipped_is_a_bad_signature() {
    let (_, signer, verifier) = setup();
    let token = signer.token(&claims());
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mac = URL_SAFE_NO_PAD.decode(sig).unwrap();
    assert_eq!(mac.len(), 32);
    for i in 0..mac.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = mac.clone();
            bad[i] ^= bit;
            let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&bad));
            assert_eq!(verify(&verifier, &forged), Err(Reason::BadSignature), "byte {i} bit {bit:#x}");
        }
    }
}

#[test]
fn every_claim_changed_is_a_bad_signature() {
    let (_, signer, verifier) = setup();
    let good = claims();
    let sig = signer.signature(&good);
    let variants: Vec<(&str, Claims)> = vec![
        ("kid", Claims { kid: "k2".into(), ..good.clone() }),
        ("exp", Claims { exp: good.exp + 1, ..good.clone() }),
        ("nbf", Claims { nbf: Some(NOW - 61), ..good.clone() }),
        ("nbf removed", Claims { nbf: None, ..good.clone() }),
        ("scope kind", Claims { scope: Scope::Path(PATH.into()), ..good.clone() }),
        ("scope widened", Claims { scope: Scope::Prefix("/videos/".into()), ..good.clone() }),
        ("ip widened", Claims { ip: Some(IpRange::parse_canonical("203.0.0.0/16").unwrap()), ..good.clone() }),
        ("ip removed", Claims { ip: None, ..good.clone() }),
        ("via added", Claims { via: Some(Via::Manifest), ..good.clone() }),
    ];
    for (what, claims) in variants {
        let text = claims.claims_text();
        let forged = format!("v1.{}.{sig}", URL_SAFE_NO_PAD.encode(text.as_bytes()));
        let want = if what == "kid" { Reason::UnknownKid } else { Reason::BadSignature };
        assert_eq!(verify(&verifier, &forged), Err(want), "changed {what}");
    }
}

#[test]
fn every_claims_byte_changed_is_refused() {
    let (_, signer, verifier) = setup();
    let good = claims();
    let sig = signer.signature(&good);
    let text = good.claims_text().into_bytes();
    for i in 0..text.len() {
        let mut bad = text.clone();
        bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
        let forged = format!("v1.{}.{sig}", URL_SAFE_NO_PAD.encode(&bad));
        let got = verify(&verifier, &forged);
        assert!(
            matches!(got, Err(Reason::BadSignature | Reason::Malformed | Reason::UnknownKid)),
            "byte {i} changed: {got:?}"
        );
    }
}

#[test]
fn reasons_have_stable_codes() {
    let codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
    assert_eq!(
        codes,
        [
            "missing",
            "malformed",
            "unknown_kid",
            "bad_signature",
            "expired",
            "not_yet_valid",
            "lifetime_too_long",
            "wrong_scope",
            "wrong_ip",
            "derived_token",
        ]
    );
}

/// A token the agent minted opens what it names, but never a new session: no grant renews itself (spec §5.5).
#[test]
fn derived_tokens_verify_but_never_open_a_session() {
    let (_, signer, verifier) = setup();
    let client: std::net::IpAddr = "203.0.113.9".parse().unwrap();
    for via in [None, Some(Via::Manifest), Some(Via::Session)] {
        let token = signer.token(&Claims { via, ..claims() });
        let query = format!("token={token}");
        let req = |path| RequestAuth { path, query: Some(&query), client_ip: Some(client), ..RequestAuth::default() };
        assert!(verifier.verify(&req(PATH), NOW).is_ok(), "{via:?} on a request");
        let session = verifier.verify_session(&req("/videos/session"), NOW);
        match via {
            None => assert_eq!(session.unwrap().scope, Scope::Prefix("/videos/abc/".into())),
            Some(_) => assert_eq!(session, Err(Reason::DerivedToken), "{via:?}"),
        }
    }
}
