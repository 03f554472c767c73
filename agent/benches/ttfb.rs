//! Time to first byte under load: C keep-alive connections per server, each asking for random 1 MiB ranges back to
//! back, timing from sending the request to the first body byte (wrk only times whole responses). Servers are
//! measured one after the other, in turn, for several runs; prints Markdown with the median p50 and p99 per server
//! and the p99 ratio of the first server to the second.
//!
//! Run by `bench/run.sh`; by hand:
//! `VD_TTFB_SERVERS="agent=http://127.0.0.1:18080/videos/big.mp4 nginx=http://127.0.0.1:18081/videos/big.mp4" \
//!  VD_TTFB_AUTH="Bearer v1.…" VD_TTFB_FILE_SIZE=67108864 cargo bench -p videodelivery-agent --bench ttfb`

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

const RANGE: u64 = 1 << 20;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn num(name: &str, default: u64) -> u64 {
    env(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One connection's loop: returns the time to first body byte of every response it got.
async fn connection(url: http::Uri, auth: Option<String>, size: u64, seed: u64, until: Instant) -> Vec<Duration> {
    let host = url.authority().expect("the URL has a host").as_str().to_owned();
    let Ok(stream) = tokio::net::TcpStream::connect(&host).await else { return Vec::new() };
    let _ = stream.set_nodelay(true);
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return Vec::new();
    };
    tokio::spawn(conn);
    let mut x = seed | 1;
    let mut out = Vec::new();
    while Instant::now() < until {
        // xorshift: a different 1 MiB range each time, anywhere in the file.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let start = x % (size - RANGE);
        let mut b = http::Request::get(url.path()).header("host", &host);
        b = b.header("range", format!("bytes={start}-{}", start + RANGE - 1));
        if let Some(a) = &auth {
            b = b.header("authorization", a);
        }
        let t = Instant::now();
        let Ok(resp) = send.send_request(b.body(Empty::<Bytes>::new()).unwrap()).await else { break };
        assert_eq!(resp.status(), 206, "{url} answered {}", resp.status());
        let mut body = resp.into_body();
        let mut first = None;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                first = Some(t.elapsed());
            }
        }
        out.extend(first);
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(servers) = env("VD_TTFB_SERVERS") else {
        eprintln!("ttfb: set VD_TTFB_SERVERS=\"name=url name=url\" (bench/run.sh does)");
        std::process::exit(2);
    };
    let servers: Vec<(String, http::Uri)> = servers
        .split_whitespace()
        .map(|s| {
            let (name, url) = s.split_once('=').expect("name=url");
            (name.to_owned(), url.parse().expect("a valid URL"))
        })
        .collect();
    let auth = env("VD_TTFB_AUTH");
    let size = num("VD_TTFB_FILE_SIZE", 64 << 20);
    let conns = num("VD_TTFB_CONNS", 64);
    let secs = num("VD_TTFB_SECONDS", 5);
    let runs = num("VD_TTFB_RUNS", 3);
    // Per server: (p50, p99, requests) of each run.
    let mut results: Vec<Vec<(Duration, Duration, usize)>> = vec![Vec::new(); servers.len()];
    for run in 0..runs {
        for (i, (_, url)) in servers.iter().enumerate() {
            let until = Instant::now() + Duration::from_secs(secs);
            let tasks: Vec<_> = (0..conns)
                .map(|c| {
                    let seed = (run * 1000 + c + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    tokio::spawn(connection(url.clone(), auth.clone(), size, seed, until))
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap_or_default());
            }
            assert!(!all.is_empty(), "{url}: no response in {secs} s");
            all.sort();
            results[i].push((percentile(&all, 0.5), percentile(&all, 0.99), all.len()));
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!("| server | requests per run (median) | TTFB p50 ms | TTFB p99 ms |");
    println!("|---|---:|---:|---:|");
    let mut p99s = Vec::new();
    for ((name, _), r) in servers.iter().zip(&results) {
        let mut p50: Vec<Duration> = r.iter().map(|x| x.0).collect();
        let mut p99: Vec<Duration> = r.iter().map(|x| x.1).collect();
        let mut n: Vec<usize> = r.iter().map(|x| x.2).collect();
        n.sort();
        let (p50, p99) = (median(&mut p50), median(&mut p99));
        p99s.push(p99);
        println!("| {name} | {} | {} | {} |", n[n.len() / 2], ms(p50), ms(p99));
    }
    if p99s.len() >= 2 {
        let ratio = p99s[0].as_secs_f64() / p99s[1].as_secs_f64();
        println!();
        println!(
            "p99 TTFB ratio {} / {}: **{ratio:.2}x** (lower is better; target ≤ 1.5x)",
            servers[0].0, servers[1].0
        );
    }
}
