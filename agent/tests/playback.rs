//! Adaptive streaming over HTTP against a real agent: the path carrier, rewritten manifests and the session cookie
//! (token format §5.4–§5.6). The browser test (tests/browser) plays the same features in Chromium.

mod common;

use common::*;
use vd_token::{Signer, UrlRequest};

const MASTER: &str = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=300000\n360p/index.m3u8\n\
    #EXT-X-STREAM-INF:BANDWIDTH=900000\nhttps://elsewhere.example/720p/index.m3u8\n";
const MEDIA: &str = "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.0,\nseg0.m4s\n#EXTINF:2.0,\n../../other/seg.m4s\n\
    #EXT-X-ENDLIST\n";

fn mint(agent: &TestAgent, path: &str, prefix: Option<&str>, exp: u64) -> (Signer, UrlRequest<'static>) {
    let path: &'static str = Box::leak(path.to_owned().into_boxed_str());
    let prefix = prefix.map(|p| &*Box::leak(p.to_owned().into_boxed_str()));
    let base: &'static str = Box::leak(format!("http://{}", agent.addr).into_boxed_str());
    let req = UrlRequest { base_url: base, path, exp, nbf: None, prefix, ip: None, carrier: vd_token::Carrier::Token };
    (Signer::new(&agent.keyring).unwrap(), req)
}

/// The token with its signature's last character changed (to another canonical one: the last of 43 base64url
/// characters carries 2 bits, so only every fourth letter is valid there).
fn tamper(token: &str) -> String {
    let last = if token.ends_with('A') { 'E' } else { 'A' };
    format!("{}{last}", &token[..token.len() - 1])
}

fn token_of(url: &str) -> &str {
    url.split("token=").nth(1).unwrap().split(['&', '#']).next().unwrap()
}

#[tokio::test]
async fn path_carrier_serves_every_file_under_the_prefix() {
    let agent = TestAgent::start(&[]).await;
    agent.put("film/master.m3u8", MASTER.as_bytes());
    agent.put("film/360p/seg0.m4s", &content(5000));
    agent.put("other/secret.mp4", b"secret");
    let (signer, req) = mint(&agent, "/videos/film/master.m3u8", Some("/videos/film/"), now() + 600);
    let url = signer.path_url(&req, "/videos").unwrap();
    assert!(url.contains("/videos/t/v1."), "{url}");

    let (status, h, body) = get(&url, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, MASTER.as_bytes(), "without rewriting the playlist is served as stored");
    assert_eq!(header(&h, "content-type"), "application/vnd.apple.mpegurl");

    // What a player does with the relative URI `360p/seg0.m4s`: resolve it against the playlist's URL.
    let segment = url.replace("master.m3u8", "360p/seg0.m4s");
    let (status, _, body) = get(&segment, &[("range", "bytes=100-199")]).await;
    assert_eq!(status, 206);
    assert_eq!(&body[..], &content(5000)[100..200]);

    let outside = url.replace("film/master.m3u8", "other/secret.mp4");
    let (status, _, body) = get(&outside, &[]).await;
    assert_eq!((status.as_u16(), reason(&body).as_str()), (403, "wrong_scope"));
    let climb = url.replace("master.m3u8", "%2E%2E/%2E%2E/other/secret.mp4");
    let (status, _, body) = get(&climb, &[]).await;
    assert_eq!((status.as_u16(), reason(&body).as_str()), (400, "bad_path"));

    // Only a prefix token may ride in the path; a tampered one is refused.
    let exact = signer.token(&signer.claims(&UrlRequest { prefix: None, ..req.clone() }).unwrap());
    let (status, _, body) = get(&agent.url(&format!("/videos/t/{exact}/film/master.m3u8")), &[]).await;
    assert_eq!((status.as_u16(), reason(&body).as_str()), (403, "malformed"));
    let token = url.split("/t/").nth(1).unwrap().split('/').next().unwrap();
    let tampered = url.replace(token, &tamper(token));
    let (status, _, body) = get(&tampered, &[]).await;
    assert_eq!((status.as_u16(), reason(&body).as_str()), (403, "bad_signature"));
}

#[tokio::test]
async fn rewritten_playlists_carry_tokens_no_wider_than_the_grant() {
    let agent = TestAgent::start(&["--rewrite-manifests"]).await;
    agent.put("film/master.m3u8", MASTER.as_bytes());
    agent.put("film/360p/index.m3u8", MEDIA.as_bytes());
    agent.put("film/360p/seg0.m4s", &content(3000));
    agent.put("film/360p/init.mp4", &content(100));
    let exp = now() + 600;
    // The backend signs the master playlist alone.
    let (signer, req) = mint(&agent, "/videos/film/master.m3u8", None, exp);
    let master_url = signer.url(&req).unwrap();

    let (status, h, body) = get(&master_url, &[]).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let variant = text.lines().find(|l| l.starts_with("360p/")).unwrap();
    assert!(variant.starts_with("360p/index.m3u8?token=v1."), "{text}");
    assert!(text.contains("\nhttps://elsewhere.example/720p/index.m3u8\n"), "another host never gets a token: {text}");
    assert_eq!(header(&h, "content-length"), text.len().to_string(), "a small rewrite has an exact length");
    assert_eq!(header(&h, "accept-ranges"), "none");
    let etag = header(&h, "etag").to_owned();
    assert!(etag.contains("-vd"), "the ETag reflects the rewrite: {etag}");

    // The backend signed one path, so each derived token opens exactly one listed path (never the folder: a
    // top-level playlist's folder is the whole library), keeps the expiry, and works on the next level down.
    let derived = token_of(variant).to_owned();
    let verifier = vd_token::Verifier::new(&agent.keyring, vd_token::Policy::default());
    let (claims, _) = verifier
        .verify_claims(
            &vd_token::RequestAuth {
                path: "/videos/film/360p/index.m3u8",
                query: Some(&format!("token={derived}")),
                ..Default::default()
            },
            now(),
        )
        .unwrap();
    assert_eq!(claims.scope, vd_token::Scope::Path("/videos/film/360p/index.m3u8".into()));
    assert_eq!(claims.exp, exp, "a rewrite never extends a token");
    assert_eq!(claims.via, Some(vd_token::Via::Manifest));

    let media_url = agent.url(&format!("/videos/film/{variant}"));
    let (status, _, body) = get(&media_url, &[]).await;
    assert_eq!(status, 200);
    let media = String::from_utf8(body.to_vec()).unwrap();
    assert!(media.contains("#EXT-X-MAP:URI=\"init.mp4?token=v1."), "{media}");
    let seg = media.lines().find(|l| l.starts_with("seg0.m4s?token=v1.")).expect("segment rewritten");
    assert!(media.contains("\n../../other/seg.m4s\n"), "outside the scope stays as it was: {media}");
    let (status, _, body) = get(&agent.url(&format!("/videos/film/360p/{seg}")), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 3000);
    let init = agent.url(&format!("/videos/film/360p/init.mp4?token={}", token_of(seg)));
    assert_eq!(get(&init, &[]).await.0, 403, "a segment's token opens that segment alone");

    // Conditional and range requests on a rewritten playlist.
    let (status, _, _) = get(&master_url, &[("if-none-match", &etag)]).await;
    assert_eq!(status, 304);
    let (status, _, body) = get(&master_url, &[("range", "bytes=0-9")]).await;
    assert_eq!((status.as_u16(), body.len()), (200, text.len()), "Range is ignored on a rewritten playlist");
    let (status, h, body) = request("HEAD", &master_url, &[]).await;
    assert_eq!((status.as_u16(), body.len(), header(&h, "etag")), (200, 0, etag.as_str()));
    assert_eq!(header(&h, "content-length"), text.len().to_string(), "HEAD promises what GET sends");

    // A big playlist streams instead of being held whole.
    let mut big = String::from("#EXTM3U\n");
    for i in 0..8000 {
        big.push_str(&format!("#EXTINF:2.0,\nseg{i}.m4s\n"));
    }
    agent.put("film/big.m3u8", big.as_bytes());
    let (signer, req) = mint(&agent, "/videos/film/big.m3u8", Some("/videos/film/"), exp);
    let (status, h, body) = get(&signer.url(&req).unwrap(), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-length"), "", "no length is promised for a streamed rewrite");
    let out = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(out.lines().filter(|l| l.contains("?token=v1.")).count(), 8000);
}

#[tokio::test]
async fn rewritten_dash_manifest_and_broken_manifest() {
    let agent = TestAgent::start(&["--rewrite-manifests"]).await;
    let mpd = r#"<?xml version="1.0"?><MPD><Period><AdaptationSet><Representation id="v">
<SegmentTemplate initialization="init-$RepresentationID$.m4s" media="chunk-$RepresentationID$-$Number%05d$.m4s"/>
</Representation></AdaptationSet></Period></MPD>"#;
    agent.put("film/manifest.mpd", mpd.as_bytes());
    agent.put("film/broken.mpd", b"<MPD><Period></MPD>");
    // A template names many segments: only a prefix token can open them, and a path token is told so.
    let (signer, req) = mint(&agent, "/videos/film/manifest.mpd", None, now() + 600);
    let (status, _, body) = get(&signer.url(&req).unwrap(), &[]).await;
    assert_eq!((status.as_u16(), reason(&body).as_str()), (403, "prefix_required"));
    let (signer, req) = mint(&agent, "/videos/film/manifest.mpd", Some("/videos/film/"), now() + 600);
    let (status, h, body) = get(&signer.url(&req).unwrap(), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), "application/dash+xml");
    let out = String::from_utf8(body.to_vec()).unwrap();
    assert!(out.contains(r#"media="chunk-$RepresentationID$-$Number%05d$.m4s?token=v1."#), "{out}");

    let (signer, req) = mint(&agent, "/videos/film/broken.mpd", None, now() + 600);
    let (status, _, body) = get(&signer.url(&req).unwrap(), &[]).await;
    assert_eq!((status.as_u16(), reason(&body).as_str()), (502, "bad_manifest"));
}

#[tokio::test]
async fn session_cookie_outlives_the_token_within_its_prefix() {
    let origin = "http://player.example";
    let agent = TestAgent::start(&[
        "--session-ttl=2h",
        "--session-cookie-insecure",
        "--session-cookie-same-site=lax",
        &format!("--cors-origin={origin}"),
        "--cors-origin=*",
    ])
    .await;
    agent.put("film/a.mp4", &content(1000));
    agent.put("other/a.mp4", &content(1000));
    // A prefix token that expires in a minute buys a two-hour session.
    let (signer, req) = mint(&agent, "/videos/film/a.mp4", Some("/videos/film/"), now() + 60);
    let token = signer.token(&signer.claims(&req).unwrap());

    let (status, h, body) = request(
        "POST",
        &agent.url("/videos/session"),
        &[("authorization", &format!("Bearer {token}")), ("origin", origin)],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let cookie = header(&h, "set-cookie").to_owned();
    assert!(cookie.starts_with("vd_token=v1."), "{cookie}");
    for part in ["Path=/videos/film/", "Max-Age=7200", "HttpOnly", "SameSite=Lax"] {
        assert!(cookie.contains(part), "{part} in {cookie}");
    }
    assert!(!cookie.contains("Secure"));
    assert!(!cookie.contains(&token), "the cookie holds a new token, not the presented one");
    assert_eq!(header(&h, "access-control-allow-origin"), origin);
    assert_eq!(header(&h, "access-control-allow-credentials"), "true");
    assert!(header(&h, "vary").contains("Origin"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["prefix"], "/videos/film/");
    assert!(v["expires"].as_u64().unwrap() >= now() + 7200 - 5);

    let pair = cookie.split(';').next().unwrap();
    let (status, h, body) = get(&agent.url("/videos/film/a.mp4"), &[("cookie", pair)]).await;
    assert_eq!((status.as_u16(), body.len()), (200, 1000));
    // Without an Origin (a `<video src>` load), the listed pages may still read its Resource Timing.
    assert_eq!(header(&h, "timing-allow-origin"), "http://player.example, *");
    let (status, _, body) = get(&agent.url("/videos/other/a.mp4"), &[("cookie", pair)]).await;
    assert_eq!((status.as_u16(), reason(&body).as_str()), (403, "wrong_scope"));

    // Only a listed origin gets credentials; `*` lets others read, without cookies.
    let (_, h, _) = request(
        "GET",
        &agent.url("/videos/session"),
        &[("authorization", &format!("Bearer {token}")), ("origin", "http://evil.example")],
    )
    .await;
    assert_eq!(header(&h, "access-control-allow-origin"), "http://evil.example");
    assert_eq!(header(&h, "access-control-allow-credentials"), "");

    // A token for one file, a tampered token, no token: no session.
    let (signer, req) = mint(&agent, "/videos/film/a.mp4", None, now() + 60);
    let exact = signer.token(&signer.claims(&req).unwrap());
    let (status, _, body) = request("POST", &agent.url(&format!("/videos/session?token={exact}")), &[]).await;
    assert_eq!((status.as_u16(), reason(&body).as_str()), (403, "wrong_scope"));
    let tampered = tamper(&token);
    let (status, h, body) = request("POST", &agent.url(&format!("/videos/session?token={tampered}")), &[]).await;
    assert_eq!((status.as_u16(), reason(&body).as_str()), (403, "bad_signature"));
    assert_eq!(header(&h, "set-cookie"), "");
    let (status, _, _) = request("POST", &agent.url("/videos/session"), &[]).await;
    assert_eq!(status, 401);
    let (status, h, _) = request("PUT", &agent.url("/videos/session"), &[]).await;
    assert_eq!((status.as_u16(), header(&h, "allow")), (405, "POST, OPTIONS"));
    let (status, _, _) = request("POST", &agent.url("/videos/film/a.mp4"), &[]).await;
    assert_eq!(status, 405, "POST is for the session exchange only");
}

#[tokio::test]
async fn session_settings_are_checked_at_start() {
    use clap::Parser;
    let base = [
        "videodelivery-agent",
        "--storage=file:///tmp",
        "--keyring=/nonexistent",
        "--listen=127.0.0.1:0",
        "--admin-listen=127.0.0.1:0",
    ];
    let cfg = |extra: &[&str]| videodelivery_agent::config::Config::try_parse_from(base.iter().chain(extra)).unwrap();
    let capped = videodelivery_agent::Agent::bind(cfg(&["--session-ttl=48h", "--max-token-lifetime=1h"])).await;
    assert_eq!(capped.ok().unwrap().state.config.session_ttl, std::time::Duration::from_secs(3600));
    let err = videodelivery_agent::Agent::bind(cfg(&["--session-cookie-insecure"])).await.err().unwrap();
    assert!(err.to_string().contains("Secure"), "{err}");
}
