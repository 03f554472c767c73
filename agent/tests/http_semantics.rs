//! HTTP semantics that caches, players and linters rely on, against a real agent over real sockets.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;
use vd_token::Carrier;

/// RFC 9110 §13.1.1 and §13.1.4: a failed `If-Match` or `If-Unmodified-Since` is 412, never the object.
#[tokio::test]
async fn failed_preconditions_are_412() {
    let agent = TestAgent::start(&[]).await;
    agent.put("a.mp4", &content(100));
    let url = agent.signed("/videos/a.mp4", Carrier::Query);
    let (_, h, _) = get(&url, &[]).await;
    let etag = header(&h, "etag").to_owned();
    let past = "Mon, 01 Jan 2001 00:00:00 GMT";
    let future = "Fri, 01 Jan 2100 00:00:00 GMT";
    for (name, value, want) in [
        ("if-match", "\"another\"", StatusCode::PRECONDITION_FAILED),
        ("if-match", &format!("W/{etag}"), StatusCode::PRECONDITION_FAILED),
        ("if-match", etag.as_str(), StatusCode::OK),
        ("if-match", "*", StatusCode::OK),
        ("if-unmodified-since", past, StatusCode::PRECONDITION_FAILED),
        ("if-unmodified-since", future, StatusCode::OK),
    ] {
        let (status, _, body) = get(&url, &[(name, value)]).await;
        assert_eq!(status, want, "{name}: {value}");
        if want == StatusCode::PRECONDITION_FAILED {
            assert_eq!(reason(&body), "precondition_failed");
        }
    }
}

/// Sends raw bytes and returns the status line of the answer.
fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned()
}

/// RFC 9112 §3.2: an HTTP/1.1 request without a Host, or with two, is 400.
#[tokio::test(flavor = "multi_thread")]
async fn http11_needs_exactly_one_host() {
    let agent = TestAgent::start(&["--public-prefix=/videos/"]).await;
    agent.put("a.mp4", b"x");
    let none = raw(agent.addr, b"GET /videos/a.mp4 HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    let two = raw(agent.addr, b"GET /videos/a.mp4 HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n");
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    let one = raw(agent.addr, b"GET /videos/a.mp4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert!(one.starts_with("HTTP/1.1 200"), "{one}");
    let old = raw(agent.addr, b"GET /videos/a.mp4 HTTP/1.0\r\n\r\n");
    assert!(old.contains(" 200"), "HTTP/1.0 has no Host: {old}");
}

#[tokio::test]
async fn vary_origin_only_with_cors_and_players_can_read_what_they_need() {
    let plain = TestAgent::start(&[]).await;
    plain.put("a.mp4", b"x");
    let (_, h, _) = get(&plain.signed("/videos/a.mp4", Carrier::Query), &[("origin", "https://app.example")]).await;
    assert!(h.get("vary").is_none(), "no CORS, nothing varies by Origin: {h:?}");

    let cors = TestAgent::start(&["--cors-origin=https://app.example"]).await;
    cors.put("a.mp4", b"x");
    let (_, h, _) = get(&cors.signed("/videos/a.mp4", Carrier::Query), &[("origin", "https://app.example")]).await;
    assert_eq!(header(&h, "vary"), "Origin");
    let exposed = header(&h, "access-control-expose-headers").to_ascii_lowercase();
    for name in ["content-range", "x-cache", "retry-after", "etag", "accept-ranges"] {
        assert!(exposed.contains(name), "{name} in {exposed}");
    }
}

/// One Content-Type for HEAD and GET, the extension deciding over a store's generic or guessed type (Safari's
/// native HLS checks it), against a real S3 server that stores none.
#[tokio::test(flavor = "multi_thread")]
async fn head_and_get_agree_on_the_content_type() {
    let s3 = s3_server();
    s3.put("media", "a.mp4", &content(100)).unwrap();
    s3.put("media", "p.m3u8", b"#EXTM3U\n").unwrap();
    let agent = start_on_s3(&s3, "s3://media", &[]).await;
    for (path, want) in [("/videos/a.mp4", "video/mp4"), ("/videos/p.m3u8", "application/vnd.apple.mpegurl")] {
        let url = agent.signed(path, Carrier::Query);
        let (_, head, _) = request("HEAD", &url, &[]).await;
        let (_, got, _) = get(&url, &[]).await;
        assert_eq!((header(&head, "content-type"), header(&got, "content-type")), (want, want), "{path}");
    }
}

/// A client that sends protocol noise (unsolicited HTTP/2 PING ACKs) cannot make the agent write a line per frame.
#[test]
fn protocol_noise_from_a_client_is_not_logged_per_frame() {
    let media = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    publish_keyring(secrets.path(), &new_keyring());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_videodelivery-agent"))
        .args([
            &format!("--listen=127.0.0.1:{port}"),
            "--admin-listen=127.0.0.1:0",
            &format!("--storage=file://{}", media.path().display()),
            &format!("--keyring={}/keyring.json", secrets.path().display()),
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut conn = loop {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    for i in 0..1000u64 {
        frames.extend_from_slice(&[0, 0, 8, 6, 1, 0, 0, 0, 0]); // PING with ACK, stream 0
        frames.extend_from_slice(&i.to_be_bytes());
    }
    let _ = conn.write_all(&frames);
    std::thread::sleep(Duration::from_millis(500));
    drop(conn);
    std::thread::sleep(Duration::from_millis(200));
    agent.kill().unwrap();
    let out = agent.wait_with_output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let lines = log.lines().count();
    assert!(lines < 20, "{lines} log lines for one noisy connection:\n{}", &log[..log.len().min(2000)]);
}
