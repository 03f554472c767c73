//! Streams under change and failure: a real S3 server (versitygw), key rotation mid-stream, clients that leave,
//! storage that is down, and SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use vd_token::{Carrier, Signer};

fn s3_env() {
    // SAFETY: every test of this binary sets the same values, and object_store reads them only while building.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", vd_testsupport::S3Server::ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", vd_testsupport::S3Server::SECRET_KEY);
        std::env::set_var("AWS_REGION", "us-east-1");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_from_a_real_s3_server() {
    s3_env();
    let s3 = vd_testsupport::S3Server::start().unwrap();
    let src = content(3 * 1024 * 1024 + 17);
    std::fs::create_dir_all(s3.root.path().join("media/films")).unwrap();
    std::fs::write(s3.root.path().join("media/films/f.mp4"), &src).unwrap();
    let endpoint = format!("--s3-endpoint={}", s3.endpoint);
    let agent = TestAgent::start_with(
        tempfile::tempdir().unwrap(),
        &[&endpoint, "--s3-path-style"],
        Some("s3://media/films".into()),
    )
    .await;
    let url = agent.signed("/videos/f.mp4", Carrier::Query);
    let n = src.len();
    for (range, first, last) in [
        ("bytes=0-1", 0, 1),
        ("bytes=1048576-2097151", 1_048_576, 2_097_151),
        ("bytes=-100", n - 100, n - 1),
        ("bytes=3000000-", 3_000_000, n - 1),
    ] {
        let (status, h, body) = get(&url, &[("range", range)]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(header(&h, "content-range"), format!("bytes {first}-{last}/{n}"));
        assert!(body[..] == src[first..=last], "{range}: bytes differ");
    }
    let (status, _, body) = get(&url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body[..] == src[..]);
    let (status, h, _) = get(&url, &[("range", &format!("bytes={n}-"))]).await;
    assert_eq!(
        (status, header(&h, "content-range")),
        (StatusCode::RANGE_NOT_SATISFIABLE, format!("bytes */{n}").as_str())
    );
    assert_eq!(get(&agent.signed("/videos/none.mp4", Carrier::Query), &[]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&format!("http://{}/readyz", agent.admin), &[]).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_down_is_a_clear_5xx_and_the_agent_stays_up() {
    s3_env();
    // Nothing listens on this port: a real refused connection, not a mock.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("--s3-endpoint=http://127.0.0.1:{port}");
    let agent = TestAgent::start_with(
        tempfile::tempdir().unwrap(),
        &[&endpoint, "--s3-path-style", "--storage-timeout=3s"],
        Some("s3://media".into()),
    )
    .await;
    let started = Instant::now();
    let (status, _, body) = get(&agent.signed("/videos/a.mp4", Carrier::Query), &[]).await;
    assert!(matches!(status, StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT), "{status}");
    assert!(reason(&body).starts_with("storage_"), "{body:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "never a hang");
    assert_eq!(get(&format!("http://{}/healthz", agent.admin), &[]).await.0, StatusCode::OK);
    assert_eq!(get(&format!("http://{}/readyz", agent.admin), &[]).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

async fn open_stream(url: &str) -> hyper::body::Incoming {
    let req = Request::get(url).body(Empty::new()).unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotation_during_an_open_stream() {
    let agent = TestAgent::start(&[]).await;
    let src = content(16 * 1024 * 1024);
    agent.put("long.mp4", &src);
    let old_url = agent.signed("/videos/long.mp4", Carrier::Query);
    let mut body = open_stream(&old_url).await;
    let mut got = Vec::new();
    got.extend_from_slice(&body.frame().await.unwrap().unwrap().into_data().unwrap());

    // The Secret changes to a keyring without the old key, swapped like a kubelet does.
    let fresh = new_keyring();
    publish_keyring(agent.secret_dir.path(), &fresh);
    let new_url =
        sign_with(&Signer::new(&fresh).unwrap(), &format!("http://{}", agent.addr), "/videos/long.mp4", Carrier::Query);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = get(&new_url, &[("range", "bytes=0-0")]).await;
        if status == StatusCode::PARTIAL_CONTENT {
            break;
        }
        assert!(Instant::now() < deadline, "the new key was not picked up within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, body_old) = get(&old_url, &[("range", "bytes=0-0")]).await;
    assert_eq!((status, reason(&body_old).as_str()), (StatusCode::FORBIDDEN, "unknown_kid"));

    while let Some(frame) = body.frame().await {
        got.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert!(got == src, "the stream that was open during the rotation completed intact");

    // A broken keyring file keeps the last good one.
    let link = agent.secret_dir.path().join("..data/keyring.json");
    std::fs::write(std::fs::canonicalize(&link).unwrap(), b"{not json").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(&new_url, &[("range", "bytes=0-0")]).await.0, StatusCode::PARTIAL_CONTENT);
    let errors: u64 = agent
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("videodelivery_agent_keyring_reload_errors_total ").map(|v| v.parse().unwrap()))
        .unwrap();
    assert!(errors >= 1, "the broken file is counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_releases_its_stream() {
    let agent = TestAgent::start(&[]).await;
    agent.put("big.mp4", &content(32 * 1024 * 1024));
    let mut body = open_stream(&agent.signed("/videos/big.mp4", Carrier::Query)).await;
    body.frame().await.unwrap().unwrap();
    assert!(agent.metrics().await.contains("active_streams 1"));
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.metrics().await.contains("active_streams 0") {
        assert!(Instant::now() < deadline, "the storage read was not released after the client left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent: u64 = agent
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("videodelivery_agent_sent_bytes_total ").map(|v| v.parse().unwrap()))
        .unwrap();
    assert!(sent < 32 * 1024 * 1024, "the agent stopped reading when the client left ({sent} bytes sent)");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_running_streams() {
    // Three workers sharing one listening socket (the default).
    drains_on_sigterm(&["--workers=3"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_running_streams_with_a_socket_per_worker() {
    drains_on_sigterm(&["--workers=3", "--reuse-port=true"]).await;
}

/// Starts the agent with `flags`, opens a long stream, sends SIGTERM: the port stays open for the shutdown delay,
/// then closes (on every worker), the stream finishes intact, and the process exits 0.
async fn drains_on_sigterm(flags: &[&str]) {
    let media = tempfile::tempdir().unwrap();
    let src = content(24 * 1024 * 1024);
    std::fs::write(media.path().join("film.mp4"), &src).unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let ring = new_keyring();
    publish_keyring(secrets.path(), &ring);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_videodelivery-agent"))
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--admin-listen=127.0.0.1:0")
        .arg(format!("--storage=file://{}", media.path().display()))
        .arg(format!("--keyring={}", secrets.path().join("keyring.json").display()))
        .arg("--shutdown-grace=20s")
        .arg("--shutdown-delay=1s")
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = sign_with(
        &Signer::new(&ring).unwrap(),
        &format!("http://127.0.0.1:{port}"),
        "/videos/film.mp4",
        Carrier::Query,
    );
    let mut body = open_stream(&url).await;
    let mut got = body.frame().await.unwrap().unwrap().into_data().unwrap().to_vec();

    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "still accepting during --shutdown-delay");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "no new connections while draining");

    while let Some(frame) = body.frame().await {
        got.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert!(got == src, "the running stream finished intact");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not exit after draining");
        std::thread::sleep(Duration::from_millis(50));
    }
}
