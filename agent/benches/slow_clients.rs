//! Many slow viewers at once: N connections (default 10,000) each reading a video at 64 KiB/s from one agent
//! process. Reports the agent's peak memory and whether every stream kept moving, as Markdown.
//! Run: `cargo bench -p videodelivery-agent --bench slow_clients` (VD_SLOW_CLIENTS, VD_SLOW_SECONDS to change;
//! VD_SLOW_FILES=N spreads the viewers over N different videos, a long-tail catalogue rather than one hit).

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
    let rate = 64 * 1024u64; // bytes per second per client
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
    let mut agent = Command::new(env!("CARGO_BIN_EXE_videodelivery-agent"))
        .args(["--storage", &format!("file://{}", media.display())])
        .args(["--keyring", dir.path().join("keyring.json").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--rate-limit", "0", "--max-streams", "100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle = rss_mib(agent.id(), "VmRSS:");

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
            let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return };
            if s.write_all(&request).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 8192];
            let mut got = 0u64;
            let mut late = 0u64;
            let tick = Duration::from_secs_f64(8192.0 / rate as f64);
            while Instant::now() < deadline {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n as u64,
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
    let mut peak_seen = 0.0f64;
    while Instant::now() < deadline {
        peak_seen = peak_seen.max(rss_mib(agent.id(), "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let peak = rss_mib(agent.id(), "VmHWM:").max(peak_seen);
    let _ = agent.kill();
    let _ = agent.wait();
    let moving = progressed.load(Ordering::Relaxed);
    let alive = alive.load(Ordering::Relaxed);
    println!(
        "| clients | videos | rate each | seconds | streams still receiving in the last 5 s | streams at half their rate or more | \
         bytes delivered | agent RSS idle | agent peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {clients} | {files} | 64 KiB/s | {seconds} | {alive} / {clients} | {moving} / {clients} | {:.0} MiB | {idle:.1} MiB | \
         {peak:.1} MiB |",
        total.load(Ordering::Relaxed) as f64 / 1048576.0
    );
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}
