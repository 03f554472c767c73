//! Many slow viewers at once: N connections (default 10,000) each reading a video at 64 KiB/s, from one agent
//! process and then, in the same run, from nginx serving the same files. Reports each server's peak memory and open
//! files and whether every stream kept moving, as Markdown (nginx needs to be on PATH; bench/run.sh installs it).
//! Run: `cargo bench -p videodelivery-agent --bench slow_clients` (VD_SLOW_CLIENTS, VD_SLOW_SECONDS to change;
//! VD_SLOW_FILES=N spreads the viewers over N different videos, a long-tail catalogue rather than one hit).

#[path = "support/health.rs"]
mod health;
#[path = "support/nginx.rs"]
mod nginx;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    raise_fd_limit();
    let clients = env_or("VD_SLOW_CLIENTS", 10_000);
    let seconds = env_or("VD_SLOW_SECONDS", 20);
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    std::fs::create_dir(&media).unwrap();
    let film: Vec<u8> = (0..32u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    std::fs::write(media.join("film.mp4"), &film).unwrap();
    let files = env_or("VD_SLOW_FILES", 1).max(1);
    for i in 1..files {
        // Same bytes, different objects: each has its own cache entries, as different films would.
        // A link inside the storage root: followed, and a name of its own (hard links are refused).
        std::os::unix::fs::symlink("film.mp4", media.join(format!("film-{i}.mp4"))).unwrap();
    }
    let keyring = vd_token::rotation::generate(now(), &mut vd_token::rotation::os_random).unwrap();
    std::fs::write(dir.path().join("keyring.json"), keyring.to_json()).unwrap();
    let signer = vd_token::Signer::new(&keyring).unwrap();
    let requests: Vec<Arc<Vec<u8>>> = (0..files)
        .map(|i| {
            let name = if i == 0 { "/videos/film.mp4".to_owned() } else { format!("/videos/film-{i}.mp4") };
            let req = vd_token::UrlRequest {
                base_url: "",
                path: &name,
                exp: now() + 3600,
                nbf: None,
                prefix: None,
                ip: None,
                carrier: vd_token::Carrier::Query,
            };
            let path = signer.url(&req).unwrap();
            Arc::new(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes())
        })
        .collect();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The agent's own binary, in its own process, so its memory is its own.
    let agent = Command::new(env!("CARGO_BIN_EXE_videodelivery-agent"))
        .args(["--storage", &format!("file://{}", media.display())])
        .args(["--keyring", dir.path().join("keyring.json").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--rate-limit", "0", "--max-streams", "100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    println!(
        "| server | clients | videos | rate each | seconds | streams still receiving in the last 5 s | streams at half \
         their rate or more | bytes delivered | RSS idle | peak RSS | peak open files | /healthz answered every \
         probe |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let row = crowd("agent", agent, port, Some(admin), &requests, clients, seconds).await;
    println!("{row}");

    // nginx on the same files (it follows the links), without tokens.
    let nginx::Nginx { child: nginx, port: nginx_port } = nginx::start(dir.path(), &media, false);
    let plain: Vec<Arc<Vec<u8>>> = (0..files)
        .map(|i| {
            let name = if i == 0 { "/videos/film.mp4".to_owned() } else { format!("/videos/film-{i}.mp4") };
            Arc::new(format!("GET {name} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes())
        })
        .collect();
    let row = crowd("nginx", nginx, nginx_port, None, &plain, clients, seconds).await;
    println!("{row}");
}

/// A server and its worker processes (nginx forks).
fn pids(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let children = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children")).unwrap_or_default();
    all.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    all
}

fn total_rss_mib(root: u32, field: &str) -> f64 {
    pids(root).iter().map(|&p| rss_mib(p, field)).sum()
}

fn fds(root: u32) -> usize {
    pids(root).iter().map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).map(|d| d.count()).unwrap_or(0)).sum()
}

/// Runs `clients` slow readers of `requests` against the server on `port` for `seconds`, probing the agent's
/// `/healthz` on `health` every half second, then stops the server. Returns the table row.
async fn crowd(
    name: &str,
    mut server: std::process::Child,
    port: u16,
    health: Option<u16>,
    requests: &[Arc<Vec<u8>>],
    clients: u64,
    seconds: u64,
) -> String {
    let rate = 64 * 1024u64; // bytes per second per client
    let files = requests.len() as u64;
    let up = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < up, "{name} did not listen on port {port} within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = total_rss_mib(server.id(), "VmRSS:");

    let progressed = Arc::new(AtomicU64::new(0));
    let alive = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let request = requests[(i % files) as usize].clone();
        let (progressed, total, alive) = (progressed.clone(), total.clone(), alive.clone());
        tasks.push(tokio::spawn(async move {
            // Spread the connects over the first second.
            tokio::time::sleep(Duration::from_micros(i * 1_000_000 / clients.max(1))).await;
            // Every wait ends at the deadline: a server that stops answering ends the run, not hangs it.
            let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
            let Ok(Ok(mut s)) = tokio::time::timeout_at(deadline.into(), connect).await else { return };
            if !matches!(tokio::time::timeout_at(deadline.into(), s.write_all(&request)).await, Ok(Ok(()))) {
                return;
            }
            let mut buf = vec![0u8; 8192];
            let mut got = 0u64;
            let mut late = 0u64;
            let tick = Duration::from_secs_f64(8192.0 / rate as f64);
            while Instant::now() < deadline {
                match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => got += n as u64,
                }
                if deadline.saturating_duration_since(Instant::now()) < Duration::from_secs(5) {
                    late += 1;
                }
                tokio::time::sleep(tick).await;
            }
            total.fetch_add(got, Ordering::Relaxed);
            // Still progressing: bytes arrived during the last 5 s of the run.
            if late > 0 {
                alive.fetch_add(1, Ordering::Relaxed);
            }
            // Moving: at least half the rate over the run, headers included.
            if got >= rate * (seconds - 2) / 2 {
                progressed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let (mut peak, mut peak_fds, mut healthy) = (0.0f64, 0usize, true);
    while Instant::now() < deadline {
        peak = peak.max(total_rss_mib(server.id(), "VmRSS:"));
        peak_fds = peak_fds.max(fds(server.id()));
        if let Some(port) = health {
            healthy &= health::healthy(port).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    // The kernel's high-water mark catches a peak between samples (for nginx, only its master's).
    peak = peak.max(rss_mib(server.id(), "VmHWM:"));
    nginx::stop(&mut server);
    let moving = progressed.load(Ordering::Relaxed);
    let alive = alive.load(Ordering::Relaxed);
    let health = match health {
        Some(_) if healthy => "yes",
        Some(_) => "no",
        None => "",
    };
    format!(
        "| {name} | {clients} | {files} | 64 KiB/s | {seconds} | {alive} / {clients} | {moving} / {clients} | {:.0} MiB | \
         {idle:.1} MiB | {peak:.1} MiB | {peak_fds} | {health} |",
        total.load(Ordering::Relaxed) as f64 / 1048576.0
    )
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}
