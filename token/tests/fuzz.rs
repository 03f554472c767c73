//! Property tests: no input makes the parsers panic, and every signed token verifies.

use proptest::prelude::*;
use vd_token::{Keyring, Policy, RequestAuth, Scope, Signer, Verifier, canonical_path, canonical_prefix};

fn ring() -> Keyring {
    let doc = r#"{"version":1,"keys":[{"kid":"k1","state":"active","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created_at":0,"activated_at":0}]}"#;
    Keyring::from_json(doc.as_bytes()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn verify_never_panics(
        path in "/[a-z%./0-9]{0,40}",
        query in "[a-zA-Z0-9=&%._~+/-]{0,200}",
        token in "v1\\.[A-Za-z0-9_-]{0,120}\\.[A-Za-z0-9_-]{0,50}",
        auth in ".{0,80}",
        cookie in ".{0,80}",
        now in any::<u64>(),
    ) {
        let verifier = Verifier::new(&ring(), Policy::default());
        let path = canonical_path(&path).map(|p| p.into_owned()).unwrap_or_else(|_| "/x".into());
        let with_token = format!("token={token}");
        for q in [Some(query.as_str()), Some(with_token.as_str()), None] {
            for path_token in [None, Some(token.as_str())] {
                let cookies = [cookie.as_str()];
                let req = RequestAuth {
                    path: &path, query: q, authorization: Some(&auth), cookies: &cookies, client_ip: None, path_token,
                };
                let _ = verifier.verify(&req, now);
                let _ = verifier.verify_session(&req, now);
            }
        }
    }

    #[test]
    fn compact_claims_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        use base64::Engine;
        let token = format!("v1.{}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes), "A".repeat(43));
        let query = format!("token={token}");
        let verifier = Verifier::new(&ring(), Policy::default());
        let req = RequestAuth { path: "/a", query: Some(&query), ..Default::default() };
        let _ = verifier.verify(&req, 0);
    }

    #[test]
    fn path_canonicalisation_never_panics_and_is_idempotent(raw in ".{0,64}") {
        for kind_prefix in [false, true] {
            let got = if kind_prefix { canonical_prefix(&raw) } else { canonical_path(&raw) };
            if let Ok(c) = got {
                // A canonical path with no '%' re-canonicalises to itself.
                if !c.contains('%') {
                    let again = if kind_prefix { canonical_prefix(&c) } else { canonical_path(&c) };
                    prop_assert_eq!(again.as_deref(), Ok(c.as_ref()));
                }
            }
        }
    }

    #[test]
    fn keyring_parser_never_panics(doc in ".{0,300}") {
        let _ = Keyring::from_json(doc.as_bytes());
    }

    #[test]
    fn signed_urls_verify(segs in proptest::collection::vec("[a-zA-Z0-9 éü+&=?#%._-]{1,12}", 1..5), ttl in 1u64..86_400) {
        let segs: Vec<String> = segs.into_iter().filter(|s| s != "." && s != "..").collect();
        prop_assume!(!segs.is_empty());
        let path = format!("/videos/{}", segs.join("/"));
        let ring = ring();
        let signer = Signer::new(&ring).unwrap();
        let verifier = Verifier::new(&ring, Policy::default());
        let now = 1_767_225_600;
        for carrier in [vd_token::Carrier::Query, vd_token::Carrier::Token] {
            let url = signer.url(&vd_token::UrlRequest {
                base_url: "https://m.example", path: &path, exp: now + ttl, nbf: None, prefix: None, ip: None, carrier,
            }).unwrap();
            let rest = url.strip_prefix("https://m.example").unwrap();
            let (raw_path, query) = rest.split_once('?').unwrap();
            let canonical = canonical_path(raw_path).unwrap();
            prop_assert_eq!(canonical.as_ref(), path.as_str());
            let req = RequestAuth { path: &canonical, query: Some(query), ..Default::default() };
            prop_assert!(verifier.verify(&req, now).is_ok(), "{}", url);
        }
        let _ = Scope::Path(path);
    }
}
