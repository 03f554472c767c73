//! A catalogue workload: C keep-alive connections per server, each asking back to back for a random 1 MiB range
//! of a title drawn from a Zipf distribution over N titles of the same size. Each server is given the URL of every
//! title, most popular first, in a file (one URL per line: the agent's carry a token, the S3 server's and nginx's a
//! presigned query). Servers take turns for several runs; prints Markdown with, per server, the median over runs of
//! requests, MiB/s, time to first body byte (p50, p99) and time to the last byte (p99), then one `served NAME
//! BYTES` line per server (body bytes over all runs) for bench/catalogue.sh to set against what storage served.
//!
//! Run by `bench/catalogue.sh`; by hand:
//! `VD_CAT_SERVERS="agent=urls-agent.txt nginx=urls-nginx.txt" VD_CAT_OBJECT_SIZE=8388608 \
//!  cargo bench -p videodelivery-agent --bench catalogue`

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

const RANGE: u64 = 1 << 20;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn num<T: std::str::FromStr>(name: &str, default: T) -> T {
    env(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What one connection saw in one run.
#[derive(Default)]
struct Seen {
    first_byte: Vec<Duration>,
    last_byte: Vec<Duration>,
    bytes: u64,
    errors: u64,
}

/// xorshift64: a fast, seeded stream of numbers, the same for every server.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The cumulative Zipf distribution over `n` titles with exponent `s`: title k (from 1) has weight 1/k^s.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

/// A title drawn from `cdf`: one uniform number, then the first title whose cumulative weight reaches it.
fn draw(cdf: &[f64], rng: &mut Rng) -> usize {
    let u = rng.unit();
    cdf.partition_point(|&c| c < u).min(cdf.len() - 1)
}

/// Fails the run loudly if the titles drawn do not follow the weights asked for: 200,000 draws, and every title
/// that should get at least 1% of them within a tenth of its share.
fn check_draws(cdf: &[f64]) {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let n = 200_000;
    let mut counts = vec![0u64; cdf.len()];
    for _ in 0..n {
        counts[draw(cdf, &mut rng)] += 1;
    }
    for (k, &count) in counts.iter().enumerate() {
        let want = cdf[k] - if k == 0 { 0.0 } else { cdf[k - 1] };
        let got = count as f64 / n as f64;
        assert!(
            want < 0.01 || (got - want).abs() <= want / 10.0,
            "title {} drawn {got:.4} of the time, its weight is {want:.4}: the sampler is wrong",
            k + 1
        );
    }
}

/// One connection's loop until `until`; a connection the server closed is opened again.
async fn connection(urls: &[http::Uri], cdf: &[f64], size: u64, seed: u64, until: Instant) -> Seen {
    let mut rng = Rng(seed | 1);
    let mut seen = Seen::default();
    let host = urls[0].authority().expect("URLs have a host").as_str().to_owned();
    'connect: while Instant::now() < until {
        let Ok(stream) = tokio::net::TcpStream::connect(&host).await else {
            seen.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
            seen.errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < until {
            // A connection the server closed after its last answer (keep-alive limit, Connection: close) is opened
            // again; only a request that fails is an error.
            if send.ready().await.is_err() {
                continue 'connect;
            }
            let title = draw(cdf, &mut rng);
            let start = rng.next() % (size - RANGE);
            let url = &urls[title];
            let req = http::Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
                .header("host", &host)
                .header("range", format!("bytes={start}-{}", start + RANGE - 1))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let t = Instant::now();
            let Ok(resp) = send.send_request(req).await else {
                seen.errors += 1;
                continue 'connect;
            };
            if resp.status() != 206 {
                seen.errors += 1;
                let _ = resp.into_body().collect().await;
                continue;
            }
            let mut body = resp.into_body();
            let (mut first, mut got) = (None, 0u64);
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(d) = frame.data_ref() {
                    if first.is_none() && !d.is_empty() {
                        first = Some(t.elapsed());
                    }
                    got += d.len() as u64;
                }
            }
            seen.bytes += got;
            if got == RANGE {
                seen.first_byte.extend(first);
                seen.last_byte.push(t.elapsed());
            } else {
                seen.errors += 1;
                continue 'connect;
            }
        }
    }
    seen
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Per run: requests, MiB/s, TTFB p50, TTFB p99, last byte p99, errors.
type Run = (usize, f64, Duration, Duration, Duration, u64);

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(servers) = env("VD_CAT_SERVERS") else {
        eprintln!("catalogue: set VD_CAT_SERVERS=\"name=url-file ...\" (bench/catalogue.sh does)");
        std::process::exit(2);
    };
    let servers: Vec<(String, Vec<http::Uri>)> = servers
        .split_whitespace()
        .map(|s| {
            let (name, file) = s.split_once('=').expect("name=url-file");
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
            let urls: Vec<http::Uri> = text.lines().map(|l| l.parse().expect("a valid URL")).collect();
            assert!(!urls.is_empty(), "{file}: no URLs");
            (name.to_owned(), urls)
        })
        .collect();
    let size: u64 = num("VD_CAT_OBJECT_SIZE", 8 << 20);
    let exponent: f64 = num("VD_CAT_ZIPF", 1.0);
    let conns: u64 = num("VD_CAT_CONNS", 64);
    let secs: u64 = num("VD_CAT_SECONDS", 10);
    let runs: u64 = num("VD_CAT_RUNS", 3);
    check_draws(&zipf_cdf(servers[0].1.len(), exponent));
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); servers.len()];
    let mut served = vec![0u64; servers.len()];
    for run in 0..runs {
        for (i, (_, urls)) in servers.iter().enumerate() {
            let cdf = zipf_cdf(urls.len(), exponent);
            let started = Instant::now();
            let until = started + Duration::from_secs(secs);
            let tasks: Vec<_> = (0..conns)
                .map(|c| {
                    // The same draws for every server in a run.
                    let seed = (run * 1000 + c + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let (urls, cdf) = (urls.clone(), cdf.clone());
                    tokio::spawn(async move { connection(&urls, &cdf, size, seed, until).await })
                })
                .collect();
            let mut all = Seen::default();
            for t in tasks {
                let s = t.await.unwrap_or_default();
                all.first_byte.extend(s.first_byte);
                all.last_byte.extend(s.last_byte);
                all.bytes += s.bytes;
                all.errors += s.errors;
            }
            let elapsed = started.elapsed().as_secs_f64();
            all.first_byte.sort();
            all.last_byte.sort();
            served[i] += all.bytes;
            results[i].push((
                all.last_byte.len(),
                all.bytes as f64 / elapsed / (1 << 20) as f64,
                percentile(&all.first_byte, 0.5),
                percentile(&all.first_byte, 0.99),
                percentile(&all.last_byte, 0.99),
                all.errors,
            ));
        }
    }
    println!(
        "| server | requests per run | MiB/s | TTFB p50 ms | TTFB p99 ms | last byte p99 ms | errors (all runs) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for ((name, _), r) in servers.iter().zip(&results) {
        println!(
            "| {name} | {} | {:.1} | {} | {} | {} | {} |",
            median(r.iter().map(|x| x.0).collect()),
            median(r.iter().map(|x| x.1).collect()),
            ms(median(r.iter().map(|x| x.2).collect())),
            ms(median(r.iter().map(|x| x.3).collect())),
            ms(median(r.iter().map(|x| x.4).collect())),
            r.iter().map(|x| x.5).sum::<u64>(),
        );
    }
    for ((name, _), bytes) in servers.iter().zip(&served) {
        println!("served {name} {bytes}");
    }
}
