//! Cost of verifying one valid token, per carrier; the agent pays this on every request.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use vd_token::{Carrier, Keyring, Policy, RequestAuth, Signer, UrlRequest, Verifier, canonical_path};

fn bench(c: &mut Criterion) {
    let doc = r#"{"version":1,"keys":[{"kid":"k1","state":"active","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created_at":0,"activated_at":0}]}"#;
    let ring = Keyring::from_json(doc.as_bytes()).unwrap();
    let signer = Signer::new(&ring).unwrap();
    let verifier = Verifier::new(&ring, Policy::default());
    let now = 1_767_225_600;
    for (name, carrier, prefix) in [
        ("signed-url params", Carrier::Query, None),
        ("compact token", Carrier::Token, None),
        ("compact prefix token", Carrier::Token, Some("/videos/abc/")),
    ] {
        let url = signer
            .url(&UrlRequest {
                base_url: "",
                path: "/videos/abc/1080p/segment-00042.m4s",
                exp: now + 3600,
                nbf: None,
                prefix,
                ip: None,
                carrier,
            })
            .unwrap();
        let (path, query) = url.split_once('?').unwrap();
        let path = canonical_path(path).unwrap().into_owned();
        c.bench_function(&format!("verify {name}"), |b| {
            b.iter(|| {
                let req = RequestAuth { path: &path, query: Some(query), ..Default::default() };
                black_box(verifier.verify(black_box(&req), now).is_ok())
            })
        });
    }
    c.bench_function("canonical_path", |b| {
        b.iter(|| black_box(canonical_path(black_box("/videos/abc/1080p/seg%2042.m4s"))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
