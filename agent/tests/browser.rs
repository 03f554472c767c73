//! Real playback in Debian's Chromium (headless, driven by Playwright): media made by ffmpeg in the test, served by
//! real agents from a local directory and from a real S3 server, played as MP4 in a `<video>` element, as HLS through
//! hls.js (fMP4 in two renditions, and AES-128 encrypted TS) and as DASH through dash.js, with a token on the master playlist only (rewritten manifests), in the path
//! (path carrier), and through a cookie session. Needs ffmpeg, chromium and `npm ci` in tests/browser, which
//! `scripts/setup.sh` installs; a missing one fails the test and names what to install.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use vd_token::{Carrier, Signer, UrlRequest};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?} ({e}); run scripts/setup.sh", cmd.get_program()));
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Six seconds of test pattern and tone: an MP4 (moov first), HLS in two renditions with fMP4 segments, and DASH.
fn make_media(dir: &Path) {
    for sub in ["film/hls", "film/dash"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    // Arguments split at spaces; `tail` holds the ones that contain a space.
    let ff = |args: &str, tail: &[&str]| {
        let mut c = Command::new("ffmpeg");
        c.current_dir(dir).args(["-hide_banner", "-loglevel", "error", "-y"]);
        c.args(args.split_whitespace()).args(tail);
        run(&mut c, "ffmpeg");
    };
    ff(
        "-f lavfi -i testsrc2=size=320x180:rate=25 -f lavfi -i sine=frequency=440:sample_rate=44100 -t 6 \
         -c:v libx264 -preset ultrafast -pix_fmt yuv420p -g 25 -c:a aac -b:a 64k -movflags +faststart film/film.mp4",
        &[],
    );
    ff(
        "-i film/film.mp4 -map 0:v -map 0:a -map 0:v -map 0:a -c:v libx264 -preset ultrafast -g 25 -c:a aac \
         -filter:v:1 scale=160:90 -b:v:0 400k -b:v:1 150k -f hls -hls_time 2 -hls_playlist_type vod \
         -hls_segment_type fmp4 -master_pl_name master.m3u8 -hls_segment_filename film/hls/r%v/seg%d.m4s",
        &["-var_stream_map", "v:0,a:0 v:1,a:1", "film/hls/r%v/index.m3u8"],
    );
    // AES-128 HLS: the playlist's EXT-X-KEY URI must carry the token too.
    std::fs::create_dir_all(dir.join("film/enc")).unwrap();
    std::fs::write(dir.join("film/enc/key.bin"), b"vd-test-aes-key!").unwrap();
    std::fs::write(dir.join("keyinfo.txt"), "key.bin\nfilm/enc/key.bin\n").unwrap();
    ff(
        "-i film/film.mp4 -c copy -f hls -hls_time 2 -hls_playlist_type vod -hls_key_info_file keyinfo.txt \
         -hls_segment_filename film/enc/seg%d.ts film/enc/index.m3u8",
        &[],
    );
    ff(
        "-i film/film.mp4 -map 0:v -map 0:a -c copy -f dash -seg_duration 2 -use_template 1 -use_timeline 0 \
         film/dash/manifest.mpd",
        &[],
    );
}

fn files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), p));
            }
        }
    }
    out
}

struct Minter {
    signer: Signer,
    base: String,
}

impl Minter {
    fn new(agent: &TestAgent) -> Minter {
        Minter::at(agent, format!("http://{}", agent.addr))
    }
    /// URLs on `base` (a host name the browser resolves to the agent) with the agent's key.
    fn at(agent: &TestAgent, base: String) -> Minter {
        Minter { signer: Signer::new(&agent.keyring).unwrap(), base }
    }
    fn req<'a>(&'a self, path: &'a str, prefix: Option<&'a str>) -> UrlRequest<'a> {
        UrlRequest {
            base_url: &self.base,
            path,
            exp: now() + 900,
            nbf: None,
            prefix,
            ip: None,
            carrier: Carrier::Token,
        }
    }
    /// `?token=` for exactly this path: what a backend hands out for a master playlist.
    fn exact(&self, path: &str) -> String {
        self.signer.url(&self.req(path, None)).unwrap()
    }
    /// `?token=` for a title's folder, on its manifest: what a DASH `SegmentTemplate` needs to be rewritten.
    fn prefixed(&self, path: &str, prefix: &str) -> String {
        self.signer.url(&self.req(path, Some(prefix))).unwrap()
    }
    fn path_carrier(&self, path: &str, prefix: &str) -> String {
        self.signer.path_url(&self.req(path, Some(prefix)), "/videos").unwrap()
    }
    fn prefix_token(&self, prefix: &str) -> String {
        let inside = format!("{prefix}any");
        let req = self.req(&inside, Some(prefix));
        self.signer.token(&self.signer.claims(&req).unwrap())
    }
}

fn tamper(url: &str) -> String {
    // Change a character inside the token's signature, its part after the second dot of `v1.`.
    let t = url.find("v1.").unwrap() + 3;
    let i = t + url[t..].find('.').unwrap() + 5;
    let c = if &url[i..=i] == "A" { "B" } else { "A" };
    format!("{}{c}{}", &url[..i], &url[i + 1..])
}

fn play(port: u16, scenarios: serde_json::Value) -> Vec<serde_json::Value> {
    play_with(serde_json::json!({ "port": port, "scenarios": scenarios }))
}

/// Runs play.mjs with a whole config (see its header: `ca`, `hosts`, `page`).
fn play_with(config: serde_json::Value) -> Vec<serde_json::Value> {
    let dir = repo().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run scripts/setup.sh (npm ci in tests/browser)"
    );
    let config = config.to_string();
    let out = run(Command::new("node").current_dir(&dir).arg("play.mjs").arg(config), "the browser run");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad report from play.mjs ({e}): {out}"))
}

fn status_count(metrics: &str, status: u16) -> u64 {
    let key = format!("videodelivery_agent_requests_total{{status=\"{status}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&key)).map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_mp4_hls_and_dash_with_one_token() {
    let media = tempfile::tempdir().unwrap();
    make_media(media.path());

    // SAFETY: set before any thread of this test reads the environment; the S3 client reads it at agent start.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", vd_testsupport::S3Server::ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", vd_testsupport::S3Server::SECRET_KEY);
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let s3 = vd_testsupport::S3Server::start().unwrap();
    for (key, path) in files(media.path()) {
        s3.put("media", &key, &std::fs::read(path).unwrap()).unwrap();
    }

    // The page lives on its own origin (another port), as a web app does; it is same-site with the agents, so a
    // SameSite=Lax cookie reaches them from credentialed requests.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cors = format!("--cors-origin=http://127.0.0.1:{port}");
    let common = [cors.as_str(), "--session-cookie-insecure", "--session-cookie-same-site=lax"];
    let with = |extra: &[&'static str]| common.iter().copied().chain(extra.iter().copied()).collect::<Vec<_>>();
    let rewriting = TestAgent::start_with(copy_of(media.path()), &with(&["--rewrite-manifests"]), None).await;
    let plain = TestAgent::start_with(copy_of(media.path()), &with(&[]), None).await;
    let endpoint: &'static str = Box::leak(format!("--s3-endpoint={}", s3.endpoint).into_boxed_str());
    let on_s3 = TestAgent::start_with(
        tempfile::tempdir().unwrap(),
        &with(&["--rewrite-manifests", endpoint, "--s3-path-style"]),
        Some("s3://media".into()),
    )
    .await;
    let (rw, pl, s3m) = (Minter::new(&rewriting), Minter::new(&plain), Minter::new(&on_s3));
    let plain_base = format!("http://{}", plain.addr);

    let scenarios = serde_json::json!([
        { "name": "mp4, local", "kind": "mp4", "url": rw.exact("/videos/film/film.mp4") },
        { "name": "mp4, S3", "kind": "mp4", "url": s3m.exact("/videos/film/film.mp4") },
        { "name": "hls.js, token on the master only, rewritten, local", "kind": "hls",
          "url": rw.exact("/videos/film/hls/master.m3u8") },
        { "name": "hls.js, token on the master only, rewritten, S3", "kind": "hls",
          "url": s3m.exact("/videos/film/hls/master.m3u8") },
        { "name": "hls.js, AES-128 (EXT-X-KEY), token on the playlist only, rewritten", "kind": "hls",
          "url": rw.exact("/videos/film/enc/index.m3u8") },
        { "name": "hls.js, path carrier, no rewriting", "kind": "hls",
          "url": pl.path_carrier("/videos/film/hls/master.m3u8", "/videos/film/hls/") },
        { "name": "dash.js, prefix token on the manifest only, rewritten", "kind": "dash",
          "url": rw.prefixed("/videos/film/dash/manifest.mpd", "/videos/film/dash/") },
        { "name": "dash.js, path carrier, no rewriting", "kind": "dash",
          "url": pl.path_carrier("/videos/film/dash/manifest.mpd", "/videos/film/") },
        { "name": "hls.js, cookie session, no token in any URL", "kind": "hls", "credentials": true,
          "session": format!("{plain_base}/videos/session?token={}", pl.prefix_token("/videos/film/")),
          "url": format!("{plain_base}/videos/film/hls/master.m3u8") },
        { "name": "dash.js, cookie session, no token in any URL", "kind": "dash", "credentials": true,
          "session": format!("{plain_base}/videos/session?token={}", pl.prefix_token("/videos/film/dash/")),
          "url": format!("{plain_base}/videos/film/dash/manifest.mpd") },
    ]);
    let reports = play(port, scenarios);
    assert_eq!(reports.len(), 10);
    for r in &reports {
        let steps = r["steps"].as_array().unwrap();
        assert!(r["errors"].as_array().unwrap().is_empty(), "{}: {r}", r["name"]);
        assert_eq!(steps.len(), 3, "{}: start, middle and end: {r}", r["name"]);
        assert!(steps.iter().all(|s| s["ok"] == true), "{}: currentTime advanced after every seek: {r}", r["name"]);
        let duration = r["duration"].as_f64().unwrap();
        assert!((5.5..6.6).contains(&duration), "{}: the whole film is there: {r}", r["name"]);
        assert_eq!(r["ended"], true, "{}: played to the end: {r}", r["name"]);
    }
    assert_eq!((&reports[8]["session"], &reports[9]["session"]), (&200.into(), &200.into()));
    for agent in [&rewriting, &plain, &on_s3] {
        let m = agent.metrics().await;
        assert_eq!((status_count(&m, 401), status_count(&m, 403)), (0, 0), "no request was refused:\n{m}");
        assert!(status_count(&m, 200) + status_count(&m, 206) > 3, "{m}");
    }

    // ffmpeg, a player outside any browser, reads the rewritten and the path-carrier HLS to the end.
    for (what, url) in [
        ("rewritten, token on the master only", rw.exact("/videos/film/hls/master.m3u8")),
        ("rewritten, AES-128", rw.exact("/videos/film/enc/index.m3u8")),
        ("path carrier", pl.path_carrier("/videos/film/hls/master.m3u8", "/videos/film/hls/")),
    ] {
        let mut c = Command::new("ffmpeg");
        c.args(["-hide_banner", "-nostats", "-loglevel", "error", "-i", &url, "-map", "0", "-f", "null", "-"]);
        let out = run(c.args(["-progress", "pipe:1"]), &format!("ffmpeg ({what})"));
        let played = out.lines().filter_map(|l| l.strip_prefix("out_time_us=")).filter_map(|v| v.parse::<i64>().ok());
        let secs = played.max().unwrap_or(0) as f64 / 1e6;
        assert!((5.5..6.6).contains(&secs), "ffmpeg ({what}) read {secs} s of 6:\n{out}");
    }
    for agent in [&rewriting, &plain] {
        let m = agent.metrics().await;
        assert_eq!((status_count(&m, 401), status_count(&m, 403)), (0, 0), "ffmpeg was never refused:\n{m}");
    }

    // A tampered token does not play, whichever way it travels.
    let negatives = serde_json::json!([
        { "name": "tampered mp4", "kind": "mp4", "url": tamper(&rw.exact("/videos/film/film.mp4")), "timeoutMs": 4000 },
        { "name": "tampered master", "kind": "hls", "url": tamper(&rw.exact("/videos/film/hls/master.m3u8")),
          "timeoutMs": 4000 },
        { "name": "tampered path carrier", "kind": "hls", "timeoutMs": 4000,
          "url": tamper(&pl.path_carrier("/videos/film/hls/master.m3u8", "/videos/film/hls/")) },
        { "name": "no session", "kind": "hls", "credentials": true, "timeoutMs": 4000,
          "url": format!("{plain_base}/videos/film/hls/master.m3u8") },
    ]);
    let reports = play(port, negatives);
    for r in &reports {
        assert!(!r["errors"].as_array().unwrap().is_empty(), "{} must fail: {r}", r["name"]);
        let first = &r["steps"][0];
        assert!(first["reached"].as_f64().unwrap() < 0.5, "{} must not play: {r}", r["name"]);
    }
    let refused = |m: &str| status_count(m, 401) + status_count(m, 403);
    assert!(refused(&rewriting.metrics().await) >= 2);
    assert!(refused(&plain.metrics().await) >= 2);
}

fn copy_of(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    for (key, path) in files(src) {
        let to = dst.path().join(key);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(path, to).unwrap();
    }
    dst
}

/// PEM files of a certificate from the test CA, for an agent's --tls-cert/--tls-key or the test page.
fn pem_files(dir: &Path, ca: &vd_testsupport::TestCa, host: &str) -> (PathBuf, PathBuf) {
    let leaf = ca.issue(&[host]).unwrap();
    let (cert, key) = (dir.join(format!("{host}.crt")), dir.join(format!("{host}.key")));
    std::fs::write(&cert, &leaf.cert).unwrap();
    std::fs::write(&key, &leaf.key).unwrap();
    (cert, key)
}

/// Every request to `origin` went over HTTP/2, as the page's Resource Timing (`nextHopProtocol`) and the network
/// stack both say; there was at least one.
fn assert_h2(r: &serde_json::Value, origin: &str) {
    let on = |list: &str| -> Vec<serde_json::Value> {
        let all = r[list].as_array().unwrap().iter();
        all.filter(|e| e["url"].as_str().unwrap().starts_with(origin)).cloned().collect()
    };
    let (timed, seen) = (on("resources"), on("network"));
    assert!(!timed.is_empty() && !seen.is_empty(), "{}: requests to {origin} were made: {r}", r["name"]);
    assert!(timed.iter().all(|e| e["protocol"] == "h2"), "{}: nextHopProtocol h2 for each: {timed:?}", r["name"]);
    assert!(seen.iter().all(|e| e["protocol"] == "h2"), "{}: h2 on the wire for each: {seen:?}", r["name"]);
}

fn assert_played(r: &serde_json::Value) {
    assert!(r["errors"].as_array().unwrap().is_empty(), "{}: {r}", r["name"]);
    let steps = r["steps"].as_array().unwrap();
    assert!(steps.len() == 3 && steps.iter().all(|s| s["ok"] == true), "{}: start, middle, end: {r}", r["name"]);
    assert_eq!(r["ended"], true, "{}: played to the end: {r}", r["name"]);
}

/// An agent serving HTTPS itself (--tls-cert/--tls-key, a certificate from a test CA that Chromium trusts through
/// its NSS database, no --ignore-certificate-errors): MP4, hls.js and a cookie session from a page on another site
/// (https://app.example.net, while the agent is https://media.example.test), all over HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_from_an_agent_serving_https_over_h2_and_a_cross_site_session() {
    let media = tempfile::tempdir().unwrap();
    make_media(media.path());
    let ca = vd_testsupport::TestCa::new().unwrap();
    let pem = tempfile::tempdir().unwrap();
    let (cert, key) = pem_files(pem.path(), &ca, "media.example.test");
    let (page_cert, page_key) = pem_files(pem.path(), &ca, "app.example.net");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let page_origin = format!("https://app.example.net:{port}");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
            format!("--cors-origin={page_origin}"),
            "--rewrite-manifests".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let start = |a: Vec<String>| {
        let media = copy_of(media.path());
        async move { TestAgent::start_with(media, &a.iter().map(String::as_str).collect::<Vec<_>>(), None).await }
    };
    // The session cookie as it is by default (SameSite=None; Secure; Partitioned), and without Partitioned.
    let agent = start(args(&[])).await;
    let unpartitioned = start(args(&["--session-cookie-partitioned=false"])).await;
    let origin = format!("https://media.example.test:{}", agent.addr.port());
    let other = format!("https://media.example.test:{}", unpartitioned.addr.port());
    let (m, u) = (Minter::at(&agent, origin.clone()), Minter::at(&unpartitioned, other.clone()));
    let session = |base: &str, m: &Minter| format!("{base}/videos/session?token={}", m.prefix_token("/videos/film/"));

    let config = |scenarios: serde_json::Value| {
        serde_json::json!({
            "port": port,
            "ca": ca.ca_file(),
            "hosts": { "media.example.test": "127.0.0.1", "app.example.net": "127.0.0.1" },
            "page": { "host": "app.example.net", "cert": page_cert, "key": page_key },
            "scenarios": scenarios,
        })
    };
    let reports = play_with(config(serde_json::json!([
        { "name": "mp4 over https", "kind": "mp4", "url": m.exact("/videos/film/film.mp4") },
        { "name": "hls.js over https, token on the master only, rewritten", "kind": "hls",
          "url": m.exact("/videos/film/hls/master.m3u8") },
        { "name": "hls.js over https, cookie session from another site", "kind": "hls", "credentials": true,
          "session": session(&origin, &m), "url": format!("{origin}/videos/film/hls/master.m3u8") },
        { "name": "the same without Partitioned", "kind": "hls", "credentials": true, "timeoutMs": 4000,
          "session": session(&other, &u), "url": format!("{other}/videos/film/hls/master.m3u8") },
    ])));
    assert_eq!(reports.len(), 4);
    for r in &reports[..3] {
        assert_played(r);
        assert_h2(r, &origin);
    }
    let cross_site = &reports[2];
    assert_eq!(cross_site["session"], 200, "{cross_site}");
    assert_eq!(cross_site["cookies"], serde_json::json!(["sent"]), "the cookie went with each request: {cross_site}");

    // What Chromium needed: its contexts (like incognito) block third-party cookies, so a plain SameSite=None;
    // Secure cookie from another site is refused ("UserPreferences"); a Partitioned one is kept for this top-level site.
    let plain = &reports[3];
    assert_eq!(plain["session"], 200, "{plain}");
    assert!(!plain["errors"].as_array().unwrap().is_empty(), "no cookie, no playback: {plain}");
    assert_eq!(plain["cookies"], serde_json::json!(["not stored: UserPreferences"]), "{plain}");
    let m = agent.metrics().await;
    assert_eq!((status_count(&m, 401), status_count(&m, 403)), (0, 0), "no request was refused:\n{m}");
}
