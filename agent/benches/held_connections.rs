//! What idle and stalled clients cost: 10,000 connections that send nothing, 10,000 HTTP/1.1 readers of a 64 MiB film
//! that never read, and 10,000 HTTP/2 streams that never read (100 connections × 100 streams), held against the
//! agent and against nginx in the same run. Reports each server's RSS and open file handles after the clients
//! settle, and whether the agent's /healthz answered every second. Markdown on stdout.
//! Run: `cargo bench -p videodelivery-agent --bench held_connections` (needs nginx on PATH; bench/run.sh installs
//! it). VD_HELD_CLIENTS changes the 10,000.

#[path = "support/health.rs"]
mod health;
#[path = "support/nginx.rs"]
mod nginx;
use health::healthy;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

/// A server and its worker processes (nginx forks).
fn pids(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let children = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children")).unwrap_or_default();
    all.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    all
}

fn rss_mib(root: u32) -> f64 {
    pids(root).iter().map(|&p| kib(p, "VmRSS:")).sum::<u64>() as f64 / 1024.0
}

fn fds(root: u32) -> usize {
    pids(root).iter().map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).map(|d| d.count()).unwrap_or(0)).sum()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server {
    name: &'static str,
    child: Child,
    port: u16,
    /// The agent's admin port, for /healthz.
    health: Option<u16>,
    /// `GET {path}` of the film, with its token.
    film: String,
}

async fn wait_for(port: u16) {
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Holds what `open` opened for a few seconds, sampling the server; returns peak RSS, peak handles and whether
/// every health probe answered.
async fn hold<T>(server: &Server, open: impl std::future::Future<Output = Vec<T>>) -> (f64, usize, bool, usize) {
    let held = open.await;
    let opened = held.len();
    let (mut rss, mut handles, mut ok) = (0.0f64, 0usize, true);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        rss = rss.max(rss_mib(server.child.id()));
        handles = handles.max(fds(server.child.id()));
        if let Some(port) = server.health {
            ok &= healthy(port).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    (rss, handles, ok, opened)
}

async fn silent(port: u16, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            out.push(s);
        }
    }
    out
}

async fn stalled_h1(port: u16, n: usize, film: &str) -> Vec<TcpStream> {
    let request = format!("GET {film} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut out = silent(port, n).await;
    for s in &mut out {
        let _ = s.write_all(request.as_bytes()).await;
    }
    out
}

/// HTTP/2 with prior knowledge; each response is kept and its body never read.
async fn stalled_h2(port: u16, conns: usize, streams: usize, film: &str) -> Vec<http::Response<hyper::body::Incoming>> {
    let mut out = Vec::new();
    for _ in 0..conns {
        let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)).await else { continue };
        let Ok((mut send, conn)) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        for _ in 0..streams {
            let req = http::Request::get(format!("http://bench{film}")).body(Empty::<Bytes>::new()).unwrap();
            if send.ready().await.is_err() {
                break;
            }
            if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), send.send_request(req)).await {
                out.push(resp);
            }
        }
    }
    out
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let clients: usize = std::env::var("VD_HELD_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    std::fs::create_dir(&media).unwrap();
    let film: Vec<u8> = (0..64u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    std::fs::write(media.join("film.mp4"), &film).unwrap();
    let keyring = vd_token::rotation::generate(now(), &mut vd_token::rotation::os_random).unwrap();
    std::fs::write(dir.path().join("keyring.json"), keyring.to_json()).unwrap();
    let req = vd_token::UrlRequest {
        base_url: "",
        path: "/videos/film.mp4",
        exp: now() + 3600,
        nbf: None,
        prefix: None,
        ip: None,
        carrier: vd_token::Carrier::Query,
    };
    let signed = vd_token::Signer::new(&keyring).unwrap().url(&req).unwrap();

    let (port, admin) = (free_port(), free_port());
    let agent = Command::new(env!("CARGO_BIN_EXE_videodelivery-agent"))
        .args(["--storage", &format!("file://{}", media.display())])
        .args(["--keyring", dir.path().join("keyring.json").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--rate-limit", "0", "--max-streams", "100000", "--max-connections", "100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let nginx::Nginx { child: nginx, port: nginx_port } = nginx::start(dir.path(), &media, true);
    let servers = [
        Server { name: "agent", child: agent, port, health: Some(admin), film: signed.clone() },
        Server { name: "nginx", child: nginx, port: nginx_port, health: None, film: "/videos/film.mp4".into() },
    ];
    println!(
        "| scenario | server | clients held | peak RSS | peak open files | agent /healthz answered every second |"
    );
    println!("|---|---|---|---|---|---|");
    for s in &servers {
        wait_for(s.port).await;
        let idle = rss_mib(s.child.id());
        println!("| idle | {} | 0 | {idle:.1} MiB | {} | |", s.name, fds(s.child.id()));
    }
    let h2_streams = 100;
    // As many streams as HTTP/1.1 readers, 100 to a connection (the agent's stream cap; nginx allows 128).
    let h2_conns = clients / h2_streams;
    for (scenario, s) in ["silent", "h1", "h2"].iter().flat_map(|sc| servers.iter().map(move |s| (*sc, s))) {
        let (rss, handles, ok, opened) = match scenario {
            "silent" => hold(s, silent(s.port, clients)).await,
            "h1" => hold(s, stalled_h1(s.port, clients, &s.film)).await,
            _ => hold(s, stalled_h2(s.port, h2_conns, h2_streams, &s.film)).await,
        };
        let what = match scenario {
            "silent" => format!("{clients} connections that send nothing"),
            "h1" => format!("{clients} HTTP/1.1 readers of a 64 MiB film that never read"),
            _ => format!("HTTP/2, {h2_conns} connections × {h2_streams} streams that never read"),
        };
        let health = if s.health.is_some() { if ok { "yes" } else { "**no**" } } else { "" };
        println!("| {what} | {} | {opened} | {rss:.1} MiB | {handles} | {health} |", s.name);
    }
    for mut s in servers {
        nginx::stop(&mut s.child);
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}
