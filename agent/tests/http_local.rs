//! The agent on the local-directory backend, checked from the client's side: bytes, status codes, headers.

mod common;

use common::*;
use http::StatusCode;
use vd_token::{Carrier, Claims, IpRange, Scope, Signer};

const LEN: usize = 1_000_003;

#[tokio::test(flavor = "multi_thread")]
async fn every_range_form_returns_exactly_the_source_bytes() {
    let agent = TestAgent::start(&[]).await;
    let src = content(LEN);
    agent.put("film.mp4", &src);
    let url = agent.signed("/videos/film.mp4", Carrier::Query);
    let n = LEN as u64;
    let cases: [(&str, u64, u64); 7] = [
        ("bytes=0-0", 0, 0),
        ("bytes=0-1", 0, 1),
        ("bytes=1000-524287", 1000, 524_287),
        ("bytes=999000-", 999_000, n - 1),
        ("bytes=-4096", n - 4096, n - 1),
        ("bytes=10-99999999", 10, n - 1),
        ("bytes=-99999999", 0, n - 1),
    ];
    for (range, first, last) in cases {
        let (status, h, body) = get(&url, &[("range", range)]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(header(&h, "content-range"), format!("bytes {first}-{last}/{n}"), "{range}");
        assert_eq!(header(&h, "content-length"), (last - first + 1).to_string());
        assert!(body[..] == src[first as usize..=last as usize], "{range}: bytes differ");
        assert_eq!(header(&h, "content-type"), "video/mp4");
    }
    let (status, h, body) = get(&url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "accept-ranges"), "bytes");
    assert!(body[..] == src[..], "whole file differs");

    let (status, h, _) = get(&url, &[("range", "bytes=0-9, 100-199")]).await;
    assert_eq!(status, StatusCode::OK, "several ranges are answered with the whole representation");
    assert_eq!(header(&h, "content-length"), LEN.to_string());

    let (status, h, _) = get(&url, &[("range", &format!("bytes={n}-"))]).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&h, "content-range"), format!("bytes */{n}"));

    let (status, _, _) = get(&url, &[("range", "lines=1-2")]).await;
    assert_eq!(status, StatusCode::OK, "an unknown range unit is ignored");
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_requests_and_head() {
    let agent = TestAgent::start(&["--cache-control=public, max-age=60"]).await;
    agent.put("a.webm", &content(5000));
    let url = agent.signed("/videos/a.webm", Carrier::Token);
    let (status, h, body) = request("HEAD", &url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(header(&h, "content-length"), "5000");
    assert_eq!(header(&h, "content-type"), "video/webm");
    assert_eq!(header(&h, "cache-control"), "public, max-age=60");
    let etag = header(&h, "etag").to_owned();
    let modified = header(&h, "last-modified").to_owned();
    assert!(etag.starts_with('"'), "{etag}");

    assert_eq!(get(&url, &[("if-none-match", &etag)]).await.0, StatusCode::NOT_MODIFIED);
    assert_eq!(get(&url, &[("if-none-match", &format!("W/{etag}"))]).await.0, StatusCode::NOT_MODIFIED);
    assert_eq!(get(&url, &[("if-none-match", "\"other\"")]).await.0, StatusCode::OK);
    assert_eq!(get(&url, &[("if-modified-since", &modified)]).await.0, StatusCode::NOT_MODIFIED);
    assert_eq!(get(&url, &[("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")]).await.0, StatusCode::OK);

    let (status, _, body) = get(&url, &[("range", "bytes=0-9"), ("if-range", &etag)]).await;
    assert_eq!((status, body.len()), (StatusCode::PARTIAL_CONTENT, 10));
    let (status, _, body) = get(&url, &[("range", "bytes=0-9"), ("if-range", "\"stale\"")]).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 5000), "a stale If-Range gets the whole new representation");
    let (status, _, _) = get(&url, &[("range", "bytes=0-9"), ("if-range", &modified)]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_for_browser_players() {
    let agent = TestAgent::start(&["--cors-origin=https://app.example"]).await;
    agent.put("a.mp4", &content(100));
    let url = agent.signed("/videos/a.mp4", Carrier::Query);
    let (status, h, _) = request(
        "OPTIONS",
        &url,
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "range"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(header(&h, "access-control-allow-origin"), "https://app.example");
    assert!(header(&h, "access-control-allow-headers").contains("Range"));
    let (_, h, _) = get(&url, &[("origin", "https://app.example"), ("range", "bytes=0-1")]).await;
    assert_eq!(header(&h, "access-control-allow-origin"), "https://app.example");
    for exposed in ["Content-Range", "Content-Length", "Accept-Ranges"] {
        assert!(header(&h, "access-control-expose-headers").contains(exposed), "{exposed}");
    }
    let (_, h, _) = get(&url, &[("origin", "https://evil.example")]).await;
    assert_eq!(header(&h, "access-control-allow-origin"), "", "other origins get no CORS grant");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_carrier_and_every_verdict() {
    let agent = TestAgent::start(&["--max-token-lifetime=1h", "--clock-skew=5s"]).await;
    agent.put("a.mp4", &content(100));
    let base = format!("http://{}", agent.addr);
    let signer = Signer::new(&agent.keyring).unwrap();
    let token = signer.token(&claims(&signer, "/videos/a.mp4", now() + 600));

    for url in [
        agent.signed("/videos/a.mp4", Carrier::Query),
        agent.signed("/videos/a.mp4", Carrier::Token),
        format!("{base}/videos/a.mp4?key={token}"),
    ] {
        assert_eq!(get(&url, &[]).await.0, StatusCode::OK, "{url}");
    }
    let plain = format!("{base}/videos/a.mp4");
    assert_eq!(get(&plain, &[("authorization", &format!("Bearer {token}"))]).await.0, StatusCode::OK);
    assert_eq!(get(&plain, &[("cookie", &format!("theme=dark; vd_token={token}"))]).await.0, StatusCode::OK);

    let (status, h, body) = get(&plain, &[]).await;
    assert_eq!((status, reason(&body).as_str()), (StatusCode::UNAUTHORIZED, "missing"));
    assert_eq!(header(&h, "www-authenticate"), "Bearer");

    let refused = |c: Claims| format!("{base}/videos/a.mp4?token={}", signer.token(&c));
    let other = Signer::with_key("k-other", &[9u8; 32]);
    let t = now();
    let cases = vec![
        (format!("{plain}?token=v1.nonsense"), "malformed"),
        (refused(Claims { exp: t - 100, ..claims(&signer, "/videos/a.mp4", 0) }), "expired"),
        (refused(Claims { nbf: Some(t + 600), ..claims(&signer, "/videos/a.mp4", t + 900) }), "not_yet_valid"),
        (refused(claims(&signer, "/videos/a.mp4", t + 7200)), "lifetime_too_long"),
        (refused(claims(&signer, "/videos/b.mp4", t + 60)), "wrong_scope"),
        (
            refused(Claims {
                ip: Some(IpRange::parse_lenient("203.0.113.1").unwrap()),
                ..claims(&signer, "/videos/a.mp4", t + 60)
            }),
            "wrong_ip",
        ),
        (format!("{plain}?token={}", other.token(&claims(&other, "/videos/a.mp4", t + 60))), "unknown_kid"),
        (format!("{plain}?token={}", &token[..token.len() - 1]), "malformed"),
        (agent.signed("/videos/a.mp4", Carrier::Query).replace("signature=", "signature=A"), "malformed"),
        (agent.signed("/videos/a.mp4", Carrier::Query).replace("expires=", "expires=1"), "bad_signature"),
    ];
    for (url, want) in cases {
        let (status, _, body) = get(&url, &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{want}");
        assert_eq!(reason(&body), want);
        let text = String::from_utf8_lossy(&body);
        let secrets = url.split(['?', '&', '=']).filter(|part| part.len() >= 20);
        for value in secrets {
            assert!(!text.contains(value), "the token is never echoed: {text}");
        }
    }
    let metrics = agent.metrics().await;
    for reason in ["missing", "expired", "wrong_scope", "bad_signature", "unknown_kid", "malformed"] {
        assert!(metrics.contains(&format!("token_rejections_total{{reason=\"{reason}\"}}")), "{reason}\n{metrics}");
    }
}

fn claims(signer: &Signer, path: &str, exp: u64) -> Claims {
    Claims { kid: signer.kid().into(), exp, nbf: None, scope: Scope::Path(path.into()), ip: None, via: None }
}

#[tokio::test(flavor = "multi_thread")]
async fn traversal_is_refused_before_any_read() {
    let agent = TestAgent::start(&["--public-prefix=/videos/"]).await;
    // Everything under /videos/ is public here, so only path rules stand between a client and the secret.
    std::fs::write(agent.media.path().parent().unwrap().join("outside-secret.txt"), b"secret").ok();
    for path in [
        "/videos/../outside-secret.txt",
        "/videos/%2e%2e/outside-secret.txt",
        "/videos/a%2F..%2F..%2Foutside-secret.txt",
        "/videos//etc/passwd",
        "/videos/a%zz",
        "/videos/a%5C..%5Cb",
        "/videos/%00",
    ] {
        let (status, _, body) = get(&agent.url(path), &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reason(&body), "bad_path");
    }
    assert_eq!(get(&agent.url("/other/a.mp4"), &[]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&agent.url("/videos/missing.mp4"), &[]).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn public_prefixes_need_no_token() {
    let agent = TestAgent::start(&["--public-prefix=/videos/trailers/"]).await;
    agent.put("trailers/t.mp4", &content(10));
    agent.put("trailersX.mp4", &content(10));
    assert_eq!(get(&agent.url("/videos/trailers/t.mp4"), &[]).await.0, StatusCode::OK);
    assert_eq!(get(&agent.url("/videos/trailersX.mp4"), &[]).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_answers_429_with_retry_after() {
    let agent = TestAgent::start(&["--rate-limit=1", "--rate-burst=3"]).await;
    agent.put("a.mp4", &content(10));
    let url = agent.signed("/videos/a.mp4", Carrier::Query);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, h, _) = get(&url, &[]).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(header(&h, "retry-after").parse::<u64>().unwrap() >= 1);
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_other_than_get_head_options_are_refused() {
    let agent = TestAgent::start(&[]).await;
    let (status, h, _) = request("POST", &agent.url("/videos/a.mp4"), &[]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&h, "allow"), "GET, HEAD, OPTIONS");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_keyring_and_storage() {
    let agent = TestAgent::start(&[]).await;
    let (status, _, body) = get(&format!("http://{}/readyz", agent.admin), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(get(&format!("http://{}/healthz", agent.admin), &[]).await.0, StatusCode::OK);
}

/// Players and CDNs that speak cleartext HTTP/2 (prior knowledge) get the same answers on the same port.
#[tokio::test(flavor = "multi_thread")]
async fn cleartext_http2_serves_ranges_on_the_same_port() {
    use http_body_util::{BodyExt, Empty};
    let agent = TestAgent::start(&[]).await;
    let src = content(LEN);
    agent.put("film.mp4", &src);
    let url = agent.signed("/videos/film.mp4", Carrier::Query);
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<bytes::Bytes>>();
    // Several ranges at once over one connection: HTTP/2 multiplexes them.
    let fetches = (0..8u64).map(|i| {
        let req = http::Request::get(&url)
            .header("range", format!("bytes={}-{}", i * 1000, i * 1000 + 999))
            .body(Empty::new())
            .unwrap();
        let h2 = h2.clone();
        async move {
            let resp = h2.request(req).await.unwrap();
            let (parts, body) = resp.into_parts();
            (i, parts.version, parts.status, body.collect().await.unwrap().to_bytes())
        }
    });
    for (i, version, status, body) in futures::future::join_all(fetches).await {
        assert_eq!(version, http::Version::HTTP_2);
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert!(body[..] == src[(i * 1000) as usize..(i * 1000 + 1000) as usize], "range {i}");
    }
    let no_token = http::Request::get(url.split('?').next().unwrap()).body(Empty::new()).unwrap();
    assert_eq!(h2.request(no_token).await.unwrap().status(), StatusCode::UNAUTHORIZED);
}
