//! Storage calls stuck in the kernel, made real by hangfs (a FUSE file system whose reads hang until released):
//! they answer 504 in time, are counted and bounded by --max-storage-threads, fail readiness while they last,
//! recover by themselves, and never keep the process from ending on SIGTERM.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use vd_testsupport::{Hang, HangFs, Process};
use vd_token::Carrier;

const SIZE: usize = 64 * 1024;

/// hangfs with one normal file, `ok.mp4`, and `stuck-{i}.mp4` for i < `stuck`, whose reads hang.
fn mount(stuck: usize) -> HangFs {
    let names: Vec<String> = (0..stuck).map(|i| format!("stuck-{i}.mp4")).collect();
    let mut files = vec![("ok.mp4", Hang::Never, SIZE)];
    files.extend(names.iter().map(|n| (n.as_str(), Hang::Read, SIZE)));
    HangFs::mount(&files).unwrap()
}

async fn start(fs: &HangFs, extra: &[&str]) -> TestAgent {
    let storage = format!("file://{}", fs.path().display());
    TestAgent::start_with(tempfile::tempdir().unwrap(), extra, Some(storage)).await
}

/// Polls `check` every 50 ms until it holds, or panics with the last value after `within`.
async fn wait_until<T: std::fmt::Debug>(
    within: Duration,
    mut probe: impl AsyncFnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let v = probe().await;
        if check(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "still {v:?} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn gauge(metrics: &str, name: &str) -> i64 {
    metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map_or(-1, |v| v.trim().parse().unwrap())
}

async fn stuck_calls(agent: &TestAgent) -> i64 {
    gauge(&agent.metrics().await, "videodelivery_agent_storage_stuck_calls")
}

async fn readyz(agent: &TestAgent) -> (StatusCode, String) {
    let (status, _, body) = get(&format!("http://{}/readyz", agent.admin), &[]).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A GET of `name`: status, reason (for errors), how long it took, and the body.
async fn fetch(agent: &TestAgent, name: &str) -> (StatusCode, String, Duration, bytes::Bytes, String) {
    let started = Instant::now();
    let (status, headers, body) = get(&agent.signed(&format!("/videos/{name}"), Carrier::Query), &[]).await;
    let reason = if status.is_success() { String::new() } else { reason(&body) };
    (status, reason, started.elapsed(), body, header(&headers, "retry-after").to_owned())
}

/// Also with the slice cache off and one worker. Then long ranges of local files go by `sendfile`, which runs on the
/// worker; a FUSE file system may answer reads past the page cache (hangfs does), so `--sendfile` leaves FUSE files
/// to the storage pool, and the one worker serves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_stuck_in_the_kernel_answers_504_in_time_while_other_files_are_served() {
    for flags in [&["--storage-timeout=1s"][..], &["--storage-timeout=1s", "--cache-size-mib=0", "--workers=1"]] {
        let fs = mount(1);
        let agent = start(&fs, flags).await;
        let stuck = tokio::spawn({
            let url = agent.signed("/videos/stuck-0.mp4", Carrier::Query);
            async move {
                let started = Instant::now();
                let (status, _, body) = get(&url, &[]).await;
                (status, reason(&body), started.elapsed())
            }
        });
        fs.wait_blocked(1, Duration::from_secs(10)).unwrap();
        // While the read hangs, the same agent serves another file from the same file system.
        let (status, _, _, body, _) = fetch(&agent, "ok.mp4").await;
        assert_eq!(status, StatusCode::OK, "{flags:?}");
        assert_eq!(body.as_ref(), content(SIZE).as_slice());
        let (status, reason, took) = stuck.await.unwrap();
        assert_eq!((status, reason.as_str()), (StatusCode::GATEWAY_TIMEOUT, "storage_timeout"), "{flags:?}");
        assert!(took < Duration::from_millis(2500), "{flags:?}: the 504 took {took:?} with a 1s storage timeout");
        let metrics = agent.metrics().await;
        let by_sendfile = metrics.lines().find_map(|l| l.strip_prefix("videodelivery_agent_sendfile_bytes_total "));
        assert_eq!(by_sendfile.map(str::trim), Some("0"), "nothing is sent from FUSE with sendfile");
    }
}

/// With 4 storage threads: 3 stuck reads fail readiness but leave a thread for other files; a 4th fills the pool,
/// and then every request that needs storage gets a fast 503 (serving it would need a thread, and adding threads
/// behind a hung file system only piles them up), while balancers route away on /readyz. Released, all recovers.
#[tokio::test(flavor = "multi_thread")]
async fn stuck_reads_are_bounded_by_the_pool_refused_fast_when_it_is_full_and_all_recovers() {
    let mut fs = mount(5);
    let agent = start(&fs, &["--storage-timeout=1s", "--max-storage-threads=4"]).await;
    assert_eq!(readyz(&agent).await.0, StatusCode::OK);
    assert_eq!(stuck_calls(&agent).await, 0);

    let mut stuck = Vec::new();
    for i in 0..3 {
        let url = agent.signed(&format!("/videos/stuck-{i}.mp4"), Carrier::Query);
        stuck.push(tokio::spawn(async move { get(&url, &[]).await.0 }));
    }
    fs.wait_blocked(3, Duration::from_secs(10)).unwrap();
    for s in stuck.drain(..) {
        assert_eq!(s.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    }
    wait_until(Duration::from_secs(5), async || stuck_calls(&agent).await, |n| *n == 3).await;
    let (status, why) = readyz(&agent).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{why}");
    assert!(why.contains("3 of 4 storage threads are stuck"), "{why}");
    let (status, _, _, body, _) = fetch(&agent, "ok.mp4").await;
    assert_eq!(status, StatusCode::OK, "one thread is still free");
    assert_eq!(body.as_ref(), content(SIZE).as_slice());

    let (status, reason, ..) = fetch(&agent, "stuck-3.mp4").await;
    assert_eq!((status, reason.as_str()), (StatusCode::GATEWAY_TIMEOUT, "storage_timeout"));
    wait_until(Duration::from_secs(5), async || stuck_calls(&agent).await, |n| *n == 4).await;
    // The pool is all stuck: no new thread, no wait, a clear answer.
    for name in ["stuck-4.mp4", "ok.mp4"] {
        let (status, reason, took, _, retry_after) = fetch(&agent, name).await;
        assert_eq!((status, reason.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "storage_stuck"), "{name}");
        assert!(took < Duration::from_millis(500), "{name}: the refusal took {took:?}");
        assert!(!retry_after.is_empty(), "{name}: no Retry-After");
    }
    assert!(fs.blocked_files().len() == 4, "no thread was added: {:?}", fs.blocked_files());
    let (status, why) = readyz(&agent).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(why.contains("4 of 4 storage threads are stuck"), "{why}");

    fs.release().unwrap();
    let (_, why) =
        wait_until(Duration::from_secs(10), async || readyz(&agent).await, |(s, _)| *s == StatusCode::OK).await;
    assert_eq!(why, "ready\n");
    assert_eq!(stuck_calls(&agent).await, 0);
    for name in ["ok.mp4", "stuck-0.mp4", "stuck-4.mp4"] {
        let (status, _, _, body, _) = fetch(&agent, name).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(body.as_ref(), content(SIZE).as_slice(), "{name}");
    }
}

/// SIGTERM ends the real process within its delay and grace (plus the runtime's one-second bound) while reads are
/// stuck in the kernel and their requests are still waiting.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_agent_while_reads_are_stuck() {
    let fs = mount(3);
    let secrets = tempfile::tempdir().unwrap();
    let keyring = new_keyring();
    publish_keyring(secrets.path(), &keyring);
    let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (port, admin) = (port(), port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_videodelivery-agent"));
    cmd.args([
        format!("--listen=127.0.0.1:{port}"),
        format!("--admin-listen=127.0.0.1:{admin}"),
        format!("--storage=file://{}", fs.path().display()),
        format!("--keyring={}/keyring.json", secrets.path().display()),
        "--rate-limit=0".into(),
        // Longer than the whole shutdown: the requests are still waiting on storage when the process must end.
        "--storage-timeout=60s".into(),
        "--shutdown-delay=0s".into(),
        "--shutdown-grace=2s".into(),
    ]);
    let log = std::env::temp_dir().join(format!("agent-stuck-{port}.log"));
    let mut agent = Process::spawn(cmd, log).unwrap();
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    wait_until(
        Duration::from_secs(10),
        async || {
            let c = client();
            let req = http::Request::get(ready.as_str()).body(http_body_util::Empty::new()).unwrap();
            c.request(req).await.map(|r| r.status()).ok()
        },
        |s| *s == Some(StatusCode::OK),
    )
    .await;
    let signer = vd_token::Signer::new(&keyring).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let requests: Vec<_> = (0..3)
        .map(|i| {
            let url = sign_with(&signer, &base, &format!("/videos/stuck-{i}.mp4"), Carrier::Query);
            let req = http::Request::get(url).body(http_body_util::Empty::new()).unwrap();
            tokio::spawn(client().request(req))
        })
        .collect();
    fs.wait_blocked(3, Duration::from_secs(10)).unwrap();

    let started = Instant::now();
    let status = agent.terminate(Duration::from_secs(10));
    let took = started.elapsed();
    assert!(status.is_some(), "still running 10s after SIGTERM:\n{}", agent.log());
    assert!(took < Duration::from_secs(4), "SIGTERM took {took:?} (grace 2s):\n{}", agent.log());
    assert!(fs.blocked_files().len() == 3);
    for r in requests {
        // Cut off with the process, never answered with a body.
        if let Ok(resp) = r.await.unwrap() {
            assert_ne!(resp.status(), StatusCode::OK);
        }
    }
}
