//! One client cannot take an agent down: silent, idle and excess connections are bounded, shutdown keeps accepting
//! while endpoints converge, and pathological manifests are refused in bounded memory. Real agent, real sockets.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Parser;
use common::*;
use http::StatusCode;
use vd_token::Carrier;

/// Whether the server closes the connection within `within` (a read returns end-of-file or a reset).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_never_sends_a_byte_is_closed() {
    let agent = TestAgent::start(&["--header-timeout=1s"]).await;
    let mut silent = connect(agent.addr);
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(4)), "a silent connection stays open");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed_http1_and_http2() {
    let agent = TestAgent::start(&["--idle-timeout=1s", "--public-prefix=/videos/"]).await;
    agent.put("a.txt", b"x");
    let mut h1 = connect(agent.addr);
    h1.write_all(b"GET /videos/a.txt HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    h1.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = h1.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut h1, Duration::from_secs(4)), "an idle HTTP/1.1 keep-alive connection stays open");

    let mut h2 = connect(agent.addr);
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    assert!(closed_within(&mut h2, Duration::from_secs(4)), "an idle HTTP/2 connection stays open");
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_connection_cap_accepting_pauses_and_the_admin_port_still_answers() {
    let agent = TestAgent::start(&["--max-connections=3", "--header-timeout=30s", "--public-prefix=/videos/"]).await;
    agent.put("a.txt", b"x");
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(agent.addr)).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fourth = connect(agent.addr);
    fourth.write_all(b"GET /videos/a.txt HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    fourth.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
    let mut buf = [0u8; 256];
    assert!(fourth.read(&mut buf).is_err(), "a fourth connection is not served while three are open");
    assert_eq!(get(&format!("http://{}/healthz", agent.admin), &[]).await.0, StatusCode::OK);
    held.pop();
    fourth.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = fourth.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "served once a slot frees");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_fails_readiness_first_and_keeps_accepting_for_the_delay() {
    let media = tempfile::tempdir().unwrap();
    std::fs::write(media.path().join("a.txt"), b"x").unwrap();
    let secrets = tempfile::tempdir().unwrap();
    publish_keyring(secrets.path(), &new_keyring());
    let config = videodelivery_agent::config::Config::try_parse_from([
        "videodelivery-agent",
        "--listen=127.0.0.1:0",
        "--admin-listen=127.0.0.1:0",
        &format!("--storage=file://{}", media.path().display()),
        &format!("--keyring={}/keyring.json", secrets.path().display()),
        "--public-prefix=/videos/",
        "--shutdown-delay=2s",
    ])
    .unwrap();
    let agent = videodelivery_agent::Agent::bind(config).await.unwrap();
    let (addr, admin) = (agent.addr, agent.admin_addr);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(agent.serve(async move {
        let _ = rx.await;
    }));
    let url = format!("http://{addr}/videos/a.txt");
    assert_eq!(get(&format!("http://{admin}/readyz"), &[]).await.0, StatusCode::OK);
    tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(&format!("http://{admin}/readyz"), &[]).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&url, &[]).await.0, StatusCode::OK, "new connections are still served during the delay");
    tokio::time::timeout(Duration::from_secs(5), done).await.expect("the agent stops after the delay").unwrap();
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed after the delay");
}

/// A pathological manifest is refused with 502 quickly, however it is built.
#[tokio::test(flavor = "multi_thread")]
async fn pathological_manifests_are_refused_in_bounded_memory() {
    let agent = TestAgent::start(&["--rewrite-manifests"]).await;
    let deep = format!("<MPD>{}{}</MPD>", "<a>".repeat(100_000), "</a>".repeat(100_000));
    agent.put("m/deep.mpd", deep.as_bytes());
    let mut attr = String::from("<MPD><Period id=\"");
    attr.push_str(&"x".repeat(20 << 20));
    attr.push_str("\"/></MPD>");
    agent.put("m/attr.mpd", attr.as_bytes());
    let mut text = String::from("<MPD><BaseURL>");
    text.push_str(&"y".repeat(20 << 20));
    text.push_str("</BaseURL></MPD>");
    agent.put("m/text.mpd", text.as_bytes());
    let short = "#EXTM3U\n".to_owned() + &"a\n".repeat(1 << 20);
    agent.put("m/short.m3u8", short.as_bytes());
    for name in ["deep.mpd", "attr.mpd", "text.mpd", "short.m3u8"] {
        let started = Instant::now();
        let url = signed_prefix(&agent, &format!("/videos/m/{name}"), "/videos/m/");
        let (status, _, body) = get(&url, &[]).await;
        assert_eq!((status, reason(&body)), (StatusCode::BAD_GATEWAY, "bad_manifest".into()), "{name}");
        assert!(started.elapsed() < Duration::from_secs(5), "{name} took {:?}", started.elapsed());
    }
}

fn signed_prefix(agent: &TestAgent, path: &str, prefix: &str) -> String {
    let req = vd_token::UrlRequest {
        base_url: &format!("http://{}", agent.addr),
        path,
        exp: now() + 600,
        nbf: None,
        prefix: Some(prefix),
        ip: None,
        carrier: Carrier::Token,
    };
    vd_token::Signer::new(&agent.keyring).unwrap().url(&req).unwrap()
}

fn gauge(metrics: &str, name: &str) -> u64 {
    metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map_or(0, |v| v.trim().parse().unwrap())
}

/// Stalled readers of many different videos cannot hold more slice memory than the cache plus the stream budget:
/// beyond it, reads wait, then are refused with 503 or cut; once the readers go, the memory comes back.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_readers_stay_within_the_memory_budget() {
    let agent = TestAgent::start(&[
        "--cache-size-mib=1",
        "--slice-size-kib=256",
        "--stream-memory-mib=1",
        "--storage-timeout=1s",
    ])
    .await;
    let film = content(48 << 20);
    for i in 0..8 {
        agent.put(&format!("f{i}.mp4"), &film);
    }
    agent.put("small.mp4", b"small");
    let budget = 2u64 << 20;
    let mut stalled = Vec::new();
    for i in 0..8 {
        let url = agent.signed(&format!("/videos/f{i}.mp4"), Carrier::Query);
        let path = url.split_once(&agent.addr.to_string()).unwrap().1.to_owned();
        let mut s = connect(agent.addr);
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).unwrap();
        stalled.push(s);
    }
    let mut peak = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        peak = peak.max(gauge(&agent.metrics().await, "videodelivery_agent_slice_memory_bytes"));
    }
    assert!(peak > 0, "the readers did hold slices");
    assert!(peak <= budget, "slice memory {peak} over the budget {budget}");
    let m = agent.metrics().await;
    assert!(gauge(&m, "videodelivery_agent_memory_busy_total") > 0, "some reads had to be refused:\n{m}");
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, _, body) = get(&agent.signed("/videos/small.mp4", Carrier::Query), &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"small"[..]), "memory came back once the readers left");
}
