//! Access control under attack (a real agent over HTTP): no token widens or outlives its grant, storage stays
//! confined, private answers stay private. Each test names the finding it guards; each failed on the agent
//! before the fix.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use common::*;
use http::StatusCode;
use vd_token::{Carrier, IpRange, Signer, UrlRequest};
use videodelivery_agent::Agent;
use videodelivery_agent::config::Config;

/// A URL for `path` (decoded, under /videos) with options, signed with the agent's active key.
fn sign(agent: &TestAgent, path: &str, prefix: Option<&str>, ttl: u64, ip: Option<&str>) -> String {
    let ip = ip.map(|ip| IpRange::parse_canonical(ip).unwrap());
    let req = UrlRequest {
        base_url: &format!("http://{}", agent.addr),
        path,
        exp: now() + ttl,
        nbf: None,
        prefix,
        ip,
        carrier: Carrier::Token,
    };
    Signer::new(&agent.keyring).unwrap().url(&req).unwrap()
}

/// The claims text inside a compact token, lines split.
fn claims_of(token: &str) -> Vec<String> {
    let body = token.strip_prefix("v1.").unwrap().split('.').next().unwrap();
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
    text.split('\n').map(str::to_owned).collect()
}

/// Every `token=` value in a text, in order.
fn tokens_in(text: &str) -> Vec<String> {
    text.match_indices("token=")
        .map(|(at, _)| {
            let rest = &text[at + 6..];
            rest[..rest.find(|c: char| c == '"' || c == '&' || c == '#' || c.is_whitespace()).unwrap_or(rest.len())]
                .to_owned()
        })
        .collect()
}

fn with_token(agent: &TestAgent, path: &str, token: &str) -> String {
    format!("http://{}{path}?token={token}", agent.addr)
}

/// Finding 1 and the chain: a 5-minute token for one top-level playlist, through rewriting and session exchange,
/// opens what the playlist lists and nothing else, and no longer than its grant.
#[tokio::test]
async fn a_playlist_token_opens_what_the_playlist_lists_and_nothing_more() {
    let agent =
        TestAgent::start(&["--rewrite-manifests", "--session-cookie-insecure", "--session-cookie-same-site=lax"]).await;
    agent.put("top.m3u8", b"#EXTM3U\n#EXTINF:2,\nseg1.ts\n#EXTINF:2,\nsub/seg2.ts\n#EXT-X-ENDLIST\n");
    agent.put("seg1.ts", b"one");
    agent.put("sub/seg2.ts", b"two");
    agent.put("secret.mp4", b"the whole library");
    agent.put("film/a.mp4", b"another title");
    let url = sign(&agent, "/videos/top.m3u8", None, 300, None);
    let exp = claims_of(url.split("token=").nth(1).unwrap())[1].clone();
    let (status, _, body) = get(&url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let playlist = String::from_utf8(body.to_vec()).unwrap();
    let derived = tokens_in(&playlist);
    assert_eq!(derived.len(), 2, "{playlist}");
    for (token, path, bytes) in [(&derived[0], "/videos/seg1.ts", "one"), (&derived[1], "/videos/sub/seg2.ts", "two")] {
        let claims = claims_of(token);
        assert_eq!(claims[3], format!("path:{path}"), "an exact path, never a prefix");
        assert_eq!(claims[1], exp, "the grant's expiry, never later");
        assert_eq!(claims.get(5).map(String::as_str), Some("via:manifest"));
        let (status, _, body) = get(&with_token(&agent, path, token), &[]).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, bytes.as_bytes()));
        for other in ["/videos/secret.mp4", "/videos/film/a.mp4", "/videos/top.m3u8"] {
            let (status, _, body) = get(&with_token(&agent, other, token), &[]).await;
            assert_eq!((status, reason(&body)), (StatusCode::FORBIDDEN, "wrong_scope".into()), "{other}");
        }
        let session = format!("http://{}/videos/session?token={token}", agent.addr);
        let (status, h, _) = request("POST", &session, &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(h.get("set-cookie").is_none());
    }
}

/// Finding 1 for prefix tokens, and finding 2: a derived token is at most the presented prefix; sessions cannot
/// renew themselves, are capped by their grant and are minted by POST only, from a listed or the same origin.
#[tokio::test]
async fn sessions_are_bounded_and_never_renew_themselves() {
    let agent = TestAgent::start(&[
        "--rewrite-manifests",
        "--session-cookie-insecure",
        "--session-cookie-same-site=lax",
        "--session-ttl=1h",
        "--cors-origin=https://app.example",
    ])
    .await;
    agent.put("film/master.m3u8", b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n720p/index.m3u8\n");
    agent.put("film/720p/index.m3u8", b"#EXTM3U\n#EXTINF:2,\ns.ts\n");
    agent.put("film/720p/s.ts", b"segment");
    agent.put("other.mp4", b"not in the grant");
    let url = sign(&agent, "/videos/film/master.m3u8", Some("/videos/film/"), 120, None);
    let grant = url.split("token=").nth(1).unwrap().to_owned();
    let grant_exp: u64 = claims_of(&grant)[1].parse().unwrap();

    let (_, _, body) = get(&url, &[]).await;
    let derived = tokens_in(std::str::from_utf8(&body).unwrap()).remove(0);
    assert_eq!(claims_of(&derived)[3], "prefix:/videos/film/", "the presented prefix, never wider");
    assert_eq!(get(&with_token(&agent, "/videos/other.mp4", &derived), &[]).await.0, StatusCode::FORBIDDEN);

    let session = format!("http://{}/videos/session", agent.addr);
    for method in ["GET", "HEAD"] {
        let (status, h, _) = request(method, &format!("{session}?token={grant}"), &[]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(header(&h, "allow"), "POST, OPTIONS");
        assert!(h.get("set-cookie").is_none());
    }
    for cross in [[("origin", "https://evil.example")], [("sec-fetch-site", "cross-site")]] {
        let (status, h, body) = request("POST", &format!("{session}?token={grant}"), &cross).await;
        assert_eq!((status, reason(&body)), (StatusCode::FORBIDDEN, "cross_site".into()), "{cross:?}");
        assert!(h.get("set-cookie").is_none());
    }
    let own = format!("http://{}", agent.addr);
    for origin in ["https://app.example", own.as_str()] {
        let (status, _, _) = request("POST", &format!("{session}?token={grant}"), &[("origin", origin)]).await;
        assert_eq!(status, StatusCode::OK, "{origin}");
    }
    let (status, h, body) = request("POST", &format!("{session}?token={grant}"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let expires = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["expires"].as_u64().unwrap();
    assert!(expires <= grant_exp.min(now()) + 3600, "a session lasts at most its lifetime past the grant");
    let cookie = header(&h, "set-cookie").split(';').next().unwrap().to_owned();
    let session_token = cookie.strip_prefix("vd_token=").unwrap().to_owned();
    assert_eq!(claims_of(&session_token).get(5).map(String::as_str), Some("via:session"));
    assert_eq!(get(&agent.url("/videos/film/720p/s.ts"), &[("cookie", &cookie)]).await.0, StatusCode::OK);

    // The session cookie, its token in any carrier, or a token from a rewritten manifest: none mints a session.
    let bearer = format!("Bearer {session_token}");
    let renewals: [(String, Vec<(&str, &str)>); 4] = [
        (session.clone(), vec![("cookie", &cookie)]),
        (format!("{session}?token={session_token}"), vec![]),
        (session.clone(), vec![("authorization", &bearer)]),
        (format!("{session}?token={derived}"), vec![]),
    ];
    for (url, headers) in &renewals {
        let (status, h, body) = request("POST", url, headers).await;
        assert_eq!((status, reason(&body)), (StatusCode::FORBIDDEN, "derived_token".into()), "{url} {headers:?}");
        assert!(h.get("set-cookie").is_none());
    }
}

/// Finding 3: file:// storage serves regular files beneath the root and nothing else.
#[tokio::test]
async fn storage_is_confined_to_the_root() {
    let agent = TestAgent::start(&[]).await;
    let root = agent.media.path();
    agent.put("real.mp4", b"inside");
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/passwd", root.join("climb")).unwrap();
    std::os::unix::fs::symlink(agent.secret_dir.path().join("keyring.json"), root.join("keyring.json")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
    std::os::unix::fs::symlink("real.mp4", root.join("alias.mp4")).unwrap();
    let outside = tempfile::NamedTempFile::new_in(root.parent().unwrap()).unwrap();
    std::fs::write(outside.path(), b"another file on the same disk").unwrap();
    std::fs::hard_link(outside.path(), root.join("hard.txt")).unwrap();
    let fifo = std::ffi::CString::new(root.join("pipe.mp4").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

    let (status, _, body) = get(&agent.signed("/videos/alias.mp4", Carrier::Query), &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"inside"[..]), "a link that stays inside is followed");
    for path in ["/videos/passwd", "/videos/climb", "/videos/keyring.json", "/videos/etc/passwd", "/videos/hard.txt"] {
        let (status, _, body) = get(&agent.signed(path, Carrier::Query), &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {}", String::from_utf8_lossy(&body));
    }
    let started = std::time::Instant::now();
    let (status, _, _) = get(&agent.signed("/videos/pipe.mp4", Carrier::Query), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a FIFO is not a file");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "and it is refused without waiting on it");
}

#[tokio::test]
async fn the_agent_refuses_a_keyring_inside_the_storage_root() {
    let media = tempfile::tempdir().unwrap();
    let ring = new_keyring();
    std::fs::create_dir(media.path().join("secrets")).unwrap();
    publish_keyring(&media.path().join("secrets"), &ring);
    let config = Config::try_parse_from([
        "videodelivery-agent",
        "--listen=127.0.0.1:0",
        "--admin-listen=127.0.0.1:0",
        &format!("--storage=file://{}", media.path().display()),
        &format!("--keyring={}/secrets/keyring.json", media.path().display()),
    ])
    .unwrap();
    let err = Agent::bind(config).await.err().expect("the agent must not start");
    assert!(err.to_string().contains("inside the storage root"), "{err}");
}

/// Finding 4: the rewriter gives no token to a URI players may resolve to another host.
#[tokio::test]
async fn rewriting_fails_closed_on_what_players_resolve_differently() {
    let agent = TestAgent::start(&["--rewrite-manifests"]).await;
    agent.put(
        "title/hls.m3u8",
        b"#EXTM3U\n#EXT-X-DEFINE:NAME=\"cdn\",VALUE=\"https://evil.example\"\n#EXTINF:2,\n{$cdn}/seg.ts\n#EXTINF:2,\nok.ts\n",
    );
    agent.put(
        "title/cdata.mpd",
        b"<MPD><BaseURL><![CDATA[https://evil.example/]]></BaseURL><SegmentList><SegmentURL media=\"a.m4s\"/></SegmentList></MPD>",
    );
    agent.put(
        "title/two.mpd",
        b"<MPD><BaseURL>./</BaseURL><BaseURL>https://evil.example/</BaseURL><SegmentList><SegmentURL media=\"a.m4s\"/></SegmentList></MPD>",
    );
    let prefix = Some("/videos/title/");
    let (_, _, body) = get(&sign(&agent, "/videos/title/hls.m3u8", prefix, 300, None), &[]).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.contains("\n{$cdn}/seg.ts\n") && text.contains("ok.ts?token="), "{text}");
    for mpd in ["/videos/title/cdata.mpd", "/videos/title/two.mpd"] {
        let (status, _, body) = get(&sign(&agent, mpd, prefix, 300, None), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!String::from_utf8_lossy(&body).contains("token="), "{mpd}: {}", String::from_utf8_lossy(&body));
    }
}

/// Finding 5: X-Forwarded-For behind a trusted proxy is walked from the right and stops where it cannot read.
#[tokio::test]
async fn forwarded_hops_that_do_not_parse_never_let_a_forged_hop_through() {
    let agent = TestAgent::start(&["--listen=[::]:0", "--trusted-proxy=127.0.0.1/32"]).await;
    agent.put("a.mp4", b"bound");
    let bound = sign(&agent, "/videos/a.mp4", None, 300, Some("203.0.113.9/32"));
    // Connect over IPv4 to the dual-stack listener: the peer is ::ffff:127.0.0.1, which the IPv4 range trusts.
    let url = bound.replace(&format!("[::]:{}", agent.addr.port()), &format!("127.0.0.1:{}", agent.addr.port()));
    let forged = ["203.0.113.9, 198.51.100.66:4711", "203.0.113.9, [2001:db8::1]:443", "203.0.113.9, unknown"];
    for xff in forged {
        let (status, _, body) = get(&url, &[("x-forwarded-for", xff)]).await;
        assert_eq!((status, reason(&body)), (StatusCode::FORBIDDEN, "wrong_ip".into()), "{xff}");
    }
    for xff in ["198.51.100.66, 203.0.113.9:4711", "203.0.113.9"] {
        assert_eq!(get(&url, &[("x-forwarded-for", xff)]).await.0, StatusCode::OK, "{xff}");
    }
}

/// Finding 6: a public prefix is a folder, never a string prefix.
#[tokio::test]
async fn public_prefixes_are_folders() {
    for bad in ["/videos/public", "/videos//public/", "/videos/../admin/", "/other/", "videos/public/"] {
        let media = tempfile::tempdir().unwrap();
        let config = Config::try_parse_from([
            "videodelivery-agent",
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
            &format!("--storage=file://{}", media.path().display()),
            "--keyring=/nonexistent/keyring.json",
            &format!("--public-prefix={bad}"),
        ])
        .unwrap();
        let err = Agent::bind(config).await.err().unwrap_or_else(|| panic!("{bad} must be refused"));
        assert!(err.to_string().contains("must be a folder"), "{err}");
    }
    let agent = TestAgent::start(&["--public-prefix=/videos/public/"]).await;
    agent.put("public/trailer.mp4", b"free");
    agent.put("publicity.txt", b"private");
    agent.put("public-premium/a.mp4", b"private");
    assert_eq!(get(&agent.url("/videos/public/trailer.mp4"), &[]).await.0, StatusCode::OK);
    for path in ["/videos/publicity.txt", "/videos/public-premium/a.mp4"] {
        assert_eq!(get(&agent.url(path), &[]).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
}

/// Finding 7: an answer granted by a header or a cookie is never publicly cacheable; every answer is nosniff.
#[tokio::test]
async fn answers_granted_by_a_header_or_cookie_stay_private() {
    let agent = TestAgent::start(&["--cache-control=public, max-age=600, s-maxage=600", "--rewrite-manifests"]).await;
    agent.put("a.mp4", b"video");
    agent.put("title/m.m3u8", b"#EXTM3U\nseg.ts\n");
    let url = sign(&agent, "/videos/a.mp4", None, 300, None);
    let token = url.split("token=").nth(1).unwrap().to_owned();
    let (status, h, _) = get(&url, &[]).await;
    assert_eq!((status, header(&h, "cache-control")), (StatusCode::OK, "public, max-age=600, s-maxage=600"));
    for (name, value) in [("authorization", format!("Bearer {token}")), ("cookie", format!("vd_token={token}"))] {
        let (status, h, _) = get(&agent.url("/videos/a.mp4"), &[(name, &value)]).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        let cc = header(&h, "cache-control");
        assert!(cc.contains("private") && !cc.contains("public") && !cc.contains("s-maxage"), "{name}: {cc}");
    }
    let (_, h, _) = get(&sign(&agent, "/videos/title/m.m3u8", Some("/videos/title/"), 300, None), &[]).await;
    assert_eq!(header(&h, "cache-control"), "private, no-cache");
    let vary = h.get_all("vary").iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>().join(", ");
    assert!(vary.contains("Authorization") && vary.contains("Cookie"), "{vary}");
    for url in [url.as_str(), &agent.url("/videos/a.mp4"), &agent.signed("/videos/none.mp4", Carrier::Query)] {
        assert_eq!(header(&get(url, &[]).await.1, "x-content-type-options"), "nosniff", "{url}");
    }
}

/// Finding 8: a name is served from the file of exactly that name, whatever its characters.
#[tokio::test]
async fn any_utf8_name_is_served_from_exactly_that_file() {
    let agent = TestAgent::start(&[]).await;
    let names = ["café noir.mp4", "100% [x] {y} #z ~a ^b |c.mp4", "a+b=c&d;e,f'g(h)!@$.mp4", "日本語/ビデオ.mp4"];
    for (i, name) in names.iter().enumerate() {
        agent.put(name, format!("file {i}").as_bytes());
    }
    agent.put("caf%C3%A9 noir.mp4", b"an impostor");
    for (i, name) in names.iter().enumerate() {
        let url = agent.signed(&format!("/videos/{name}"), Carrier::Query);
        let (status, _, body) = get(&url, &[]).await;
        assert_eq!(
            (status, String::from_utf8_lossy(&body).into_owned()),
            (StatusCode::OK, format!("file {i}")),
            "{name}"
        );
    }
}

/// Finding 8 on S3: the key of exactly that name, against a real S3 server.
#[tokio::test(flavor = "multi_thread")]
async fn any_utf8_name_is_served_from_exactly_that_s3_key() {
    let s3 = s3_server();
    let names = ["café noir.mp4", "100% [x] {y} #z ~a ^b |c.mp4", "a+b=c&d;e,f'g(h)!@$.mp4", "日本語/ビデオ.mp4"];
    for (i, name) in names.iter().enumerate() {
        s3.put("media", &format!("films/{name}"), format!("object {i}").as_bytes()).unwrap();
    }
    s3.put("media", "films/caf%C3%A9 noir.mp4", b"an impostor").unwrap();
    let agent = start_on_s3(&s3, "s3://media/films", &[]).await;
    for (i, name) in names.iter().enumerate() {
        let url = agent.signed(&format!("/videos/{name}"), Carrier::Query);
        let (status, _, body) = get(&url, &[]).await;
        let got = (status, String::from_utf8_lossy(&body).into_owned());
        assert_eq!(got, (StatusCode::OK, format!("object {i}")), "{name}");
    }
}
