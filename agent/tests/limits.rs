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
    let film = content(4 << 20);
    for i in 0..32 {
        agent.put(&format!("f{i}.mp4"), &film);
    }
    agent.put("small.mp4", b"small");
    let budget = 2u64 << 20;
    let mut stalled = Vec::new();
    for i in 0..32 {
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

/// What one paced reader got: the status line and the body bytes read.
struct Paced {
    status: String,
    body: usize,
    cut: bool,
}

/// Reads a signed `path` at `rate` bytes a second for `run`, as a player that has filled its buffer does. Its
/// receive buffer is fixed at 64 KiB, as a slow link's window would be (on loopback the kernel would otherwise
/// take megabytes at once and hide how the agent paces the stream).
fn paced_reader(addr: SocketAddr, path: String, rate: usize, run: Duration) -> Paced {
    let mut s = connect(addr);
    let size: libc::c_int = 64 << 10;
    // SAFETY: a valid socket descriptor and a c_int option value of the size given.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVBUF");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut head, mut headed, mut body, mut cut) = (Vec::new(), false, 0usize, false);
    let start = Instant::now();
    let tick = Duration::from_millis(50);
    let mut buf = vec![0u8; rate / 20];
    while start.elapsed() < run {
        let due = start.elapsed().as_secs_f64() * rate as f64;
        let mut want = (due as usize).saturating_sub(body).min(buf.len());
        while want > 0 {
            match s.read(&mut buf[..want]) {
                Ok(0) | Err(_) => {
                    cut = true;
                    break;
                }
                Ok(n) if !headed => {
                    head.extend_from_slice(&buf[..n]);
                    if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        body += head.len() - end - 4;
                        head.truncate(end);
                        headed = true;
                    }
                }
                Ok(n) => {
                    body += n;
                    want -= n;
                }
            }
        }
        if cut {
            break;
        }
        std::thread::sleep(tick);
    }
    let status = String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or_default()).into_owned();
    Paced { status, body, cut }
}

/// Slow viewers of many different videos (nothing shared, a long-tail catalogue) all keep their rate inside the
/// memory budget: a stream that cannot have a whole slice streams small chunks past the cache, and only a reader
/// that keeps up gets a slice read ahead. A chunked stream holds about 96 KiB (hyper's 64 KiB write buffer and one
/// 32 KiB chunk): 24 readers fit in 8 MiB beside the first slices, where 1 MiB slices would need 24 to 48 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn slow_readers_of_different_videos_keep_their_rate_within_the_budget() {
    let agent = TestAgent::start(&["--cache-size-mib=2", "--stream-memory-mib=6", "--storage-timeout=1s"]).await;
    let (readers, rate, run) = (24, 96 << 10, Duration::from_secs(4));
    let film = content(8 << 20);
    for i in 0..readers {
        agent.put(&format!("v{i}.mp4"), &film);
    }
    let budget = 8u64 << 20;
    let threads: Vec<_> = (0..readers)
        .map(|i| {
            let url = agent.signed(&format!("/videos/v{i}.mp4"), Carrier::Query);
            let path = url.split_once(&agent.addr.to_string()).unwrap().1.to_owned();
            let addr = agent.addr;
            std::thread::spawn(move || paced_reader(addr, path, rate, run))
        })
        .collect();
    let mut peak = 0;
    while !threads.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(gauge(&agent.metrics().await, "videodelivery_agent_slice_memory_bytes"));
    }
    let got: Vec<Paced> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let m = agent.metrics().await;
    for (i, p) in got.iter().enumerate() {
        assert!(p.status.ends_with("200 OK"), "reader {i} was answered {:?}\n{m}", p.status);
        assert!(!p.cut, "reader {i} was cut after {} bytes\n{m}", p.body);
        let wanted = rate as f64 * run.as_secs_f64();
        assert!(p.body as f64 >= 0.75 * wanted, "reader {i} got {} of {wanted} bytes\n{m}", p.body);
    }
    assert!(peak <= budget, "slice memory {peak} over the budget {budget}");
    assert_eq!(gauge(&m, "videodelivery_agent_memory_busy_total"), 0, "no read was refused or cut:\n{m}");
    assert!(gauge(&m, "videodelivery_agent_cache_streamed_slices_total") > 0, "slices streamed past the cache:\n{m}");
}
