//! The access log of a real agent process, read from its stdout: one line per request with the fields an operator
//! needs to answer "why did this viewer get 403?", and no token, signature or cookie anywhere in the output.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use vd_token::{Carrier, Signer};

struct Agent {
    child: Child,
    port: u16,
    admin: u16,
    media: tempfile::TempDir,
    _secrets: tempfile::TempDir,
    keyring: vd_token::Keyring,
    lines: Receiver<String>,
    /// Everything the process wrote (stdout and stderr), for the no-secret check.
    all: std::sync::Arc<std::sync::Mutex<String>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(extra: &[&str]) -> Agent {
    let media = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let keyring = new_keyring();
    publish_keyring(secrets.path(), &keyring);
    let (port, admin) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_videodelivery-agent"))
        .args([
            &format!("--listen=127.0.0.1:{port}"),
            &format!("--admin-listen=127.0.0.1:{admin}"),
            &format!("--storage=file://{}", media.path().display()),
            &format!("--keyring={}/keyring.json", secrets.path().display()),
            "--public-prefix=/videos/public/",
            "--trusted-proxy=127.0.0.1/32",
            "--rate-limit=0",
        ])
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("VD_ACCESS_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let all = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, lines) = channel();
    let stdout = child.stdout.take().unwrap();
    let sink = all.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&format!("{line}\n"));
            let _ = tx.send(line);
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let sink = all.clone();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        sink.lock().unwrap().push_str(&s);
    });
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "the agent did not listen within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Agent { child, port, admin, media, _secrets: secrets, keyring, lines, all }
}

impl Agent {
    fn put(&self, name: &str, bytes: &[u8]) {
        let path = self.media.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn signed(&self, path: &str, carrier: Carrier) -> String {
        sign_with(&Signer::new(&self.keyring).unwrap(), &self.base(), path, carrier)
    }

    /// The access log lines (JSON objects with `"log":"access"`) written within `within`, until `n` are seen.
    fn access_lines(&self, n: usize, within: Duration) -> Vec<Value> {
        let until = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["log"] == "access"
            {
                got.push(v);
            }
        }
        got
    }

    fn output(&self) -> String {
        self.all.lock().unwrap().clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn line_with_id<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    let found: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == id).collect();
    assert_eq!(found.len(), 1, "one line for request {id}: {lines:#?}");
    found[0]
}

/// The raw (as sent) and decoded query value of `name` in `url`.
fn param(url: &str, name: &str) -> (String, String) {
    let query = url.split_once('?').unwrap().1;
    let raw = query.split('&').find_map(|p| p.strip_prefix(&format!("{name}="))).unwrap().to_owned();
    let decoded = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).unwrap().1.into_owned();
    (raw, decoded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_access_log_line_with_its_fields_and_no_secret() {
    let agent = start(&["--access-log-format=json"]);
    let film = content(300 * 1024);
    agent.put("films/a.mp4", &film);
    agent.put("public/trailer.jpg", b"jpeg");

    // Signed (query carrier), through a trusted proxy, with the client's own request id.
    let signed = agent.signed("/videos/films/a.mp4", Carrier::Query);
    let (raw_signature, signature) = param(&signed, "signature");
    let (status, head, body) = get(
        &signed,
        &[("x-request-id", "req-signed-1"), ("x-forwarded-for", "203.0.113.7"), ("user-agent", "TestPlayer/1.0")],
    )
    .await;
    assert_eq!((status.as_u16(), body.len()), (200, film.len()));
    assert_eq!(header(&head, "x-request-id"), "req-signed-1", "a sane X-Request-Id is kept and returned");

    // Signed with a compact token, a range, and a session cookie and bearer header that must never be logged.
    let tokened = agent.signed("/videos/films/a.mp4", Carrier::Token);
    let (raw_token, token) = param(&tokened, "token");
    let (status, _, body) = get(
        &tokened,
        &[
            ("x-request-id", "req-token-2"),
            ("range", "bytes=0-99"),
            ("cookie", "vd_token=SESSIONCOOKIESECRET; other=OTHERCOOKIESECRET"),
        ],
    )
    .await;
    assert_eq!((status.as_u16(), body.len()), (206, 100));

    // Refused: the signature altered.
    let first = if raw_signature.starts_with('A') { "B" } else { "A" };
    let forged_signature = format!("{first}{}", &raw_signature[1..]);
    let forged = signed.replace(&raw_signature, &forged_signature);
    let (status, _, _) = get(&forged, &[("x-request-id", "req-forged-3")]).await;
    assert_eq!(status.as_u16(), 403);

    // Refused: no token, with a bearer header the verifier reads (a wrong token) — the header is never logged.
    let (status, _, _) = get(
        &format!("{}/videos/films/a.mp4", agent.base()),
        &[("x-request-id", "req-bearer-4"), ("authorization", "Bearer BEARERTOKENSECRET")],
    )
    .await;
    assert_eq!(status.as_u16(), 403);

    // Refused: a path carrier with a token that is not one.
    let (status, _, _) =
        get(&format!("{}/videos/t/PATHTOKENSECRET/films/a.mp4", agent.base()), &[("x-request-id", "req-path-5")]).await;
    assert_eq!(status.as_u16(), 403);

    // Public, with an X-Request-Id that could forge a log line: replaced by a generated one, which is returned.
    let (status, head, _) =
        get(&format!("{}/videos/public/trailer.jpg", agent.base()), &[("x-request-id", "bad id\"}{\"forged\":1")])
            .await;
    assert_eq!(status.as_u16(), 200);
    let generated = header(&head, "x-request-id").to_owned();
    assert!(generated.len() == 16 && generated.bytes().all(|b| b.is_ascii_hexdigit()), "generated id {generated:?}");

    // Missing token: 401.
    let (status, head, _) = get(&format!("{}/videos/films/a.mp4", agent.base()), &[]).await;
    assert_eq!(status.as_u16(), 401);
    let missing_id = header(&head, "x-request-id").to_owned();
    assert!(!missing_id.is_empty() && missing_id != generated, "every answer has its own id");

    let lines = agent.access_lines(7, Duration::from_secs(10));
    assert_eq!(lines.len(), 7, "one line per request: {lines:#?}");

    let l = line_with_id(&lines, "req-signed-1");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes"], film.len());
    assert_eq!(l["cache"], "miss");
    assert_eq!(l["refusal"], Value::Null);
    assert_eq!(l["client"], "203.0.113.7", "the client behind the trusted proxy");
    assert_eq!(l["user_agent"], "TestPlayer/1.0");
    assert_eq!(l["http_version"], "HTTP/1.1");
    assert_eq!(l["outcome"], "complete");
    assert!(l["path"].as_str().unwrap().starts_with("/videos/films/a.mp4?"), "{l}");
    assert!(l["path"].as_str().unwrap().contains("signature=REDACTED"), "{l}");
    assert!(l["path"].as_str().unwrap().contains("expires="), "non-secret parameters stay: {l}");
    let (ttfb, duration) = (l["ttfb_ms"].as_f64().unwrap(), l["duration_ms"].as_f64().unwrap());
    assert!(ttfb >= 0.0 && duration >= ttfb, "ttfb {ttfb} ms within duration {duration} ms");
    assert!(l["time"].as_str().unwrap().ends_with('Z'), "{l}");

    let l = line_with_id(&lines, "req-token-2");
    assert_eq!((l["status"].as_u64(), l["bytes"].as_u64()), (Some(206), Some(100)));
    assert_eq!(l["cache"], "hit", "the first request loaded the slice");
    assert!(l["path"].as_str().unwrap().ends_with("?token=REDACTED"), "{l}");
    assert_eq!(l["client"], "127.0.0.1");

    let l = line_with_id(&lines, "req-forged-3");
    assert_eq!((l["status"].as_u64(), l["refusal"].as_str()), (Some(403), Some("bad_signature")));
    assert_eq!(l["cache"], "none");

    let l = line_with_id(&lines, "req-bearer-4");
    assert_eq!(l["status"], 403);
    assert!(l["refusal"].is_string(), "{l}");

    let l = line_with_id(&lines, "req-path-5");
    assert_eq!(l["status"], 403);
    assert!(l["path"].as_str().unwrap().starts_with("/videos/t/REDACTED/films/a.mp4"), "{l}");

    let l = line_with_id(&lines, &generated);
    assert_eq!((l["status"].as_u64(), l["refusal"].as_str()), (Some(200), None));
    assert_eq!(l["path"], "/videos/public/trailer.jpg");
    assert_eq!(l["bytes"], 4);

    let l = line_with_id(&lines, &missing_id);
    assert_eq!((l["status"].as_u64(), l["refusal"].as_str()), (Some(401), Some("missing")));

    let out = agent.output();
    for secret in [
        signature.as_str(),
        raw_signature.as_str(),
        token.as_str(),
        raw_token.as_str(),
        forged_signature.as_str(),
        "SESSIONCOOKIESECRET",
        "OTHERCOOKIESECRET",
        "BEARERTOKENSECRET",
        "PATHTOKENSECRET",
        "forged\":1",
    ] {
        assert!(!out.contains(secret), "{secret:?} appears in the agent's output:\n{out}");
    }

    // The metrics agree: egress by status class and cache status, and refusals by reason.
    let (_, _, body) = get(&format!("http://127.0.0.1:{}/metrics", agent.admin), &[]).await;
    let metrics = String::from_utf8(body.to_vec()).unwrap();
    // The film and the 4-byte trailer were each loaded from storage once.
    let want =
        format!("videodelivery_agent_served_bytes_total{{status_class=\"2xx\",cache=\"miss\"}} {}", film.len() + 4);
    assert!(metrics.contains(&want), "{want} in\n{metrics}");
    assert!(metrics.contains("videodelivery_agent_served_bytes_total{status_class=\"2xx\",cache=\"hit\"} 100"));
    assert!(metrics.contains("videodelivery_agent_refusals_total{reason=\"bad_signature\"} 1"), "{metrics}");
    assert!(metrics.contains("videodelivery_agent_refusals_total{reason=\"missing\"} 1"), "{metrics}");
    assert!(metrics.contains("videodelivery_agent_access_log_lines_total 7"), "{metrics}");
    assert!(metrics.contains("videodelivery_agent_access_log_dropped_total 0"), "{metrics}");
}

/// A viewer who closes the player mid-film is logged too, with the bytes that left before it went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_answer_is_logged_with_the_bytes_sent() {
    let agent = start(&["--access-log-format=json", "--cache-size-mib=0"]);
    agent.put("films/long.mp4", &content(64 << 20));
    let url = agent.signed("/videos/films/long.mp4", Carrier::Query);
    let path = url.strip_prefix(&agent.base()).unwrap().to_owned();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-abort\r\n\r\n").unwrap();
    let mut first = [0u8; 4096];
    let n = conn.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(conn);

    let lines = agent.access_lines(1, Duration::from_secs(10));
    let l = line_with_id(&lines, "req-abort");
    assert_eq!((l["status"].as_u64(), l["outcome"].as_str()), (Some(200), Some("aborted")), "{l}");
    assert_eq!(l["cache"], "bypass");
    let bytes = l["bytes"].as_u64().unwrap();
    assert!(bytes < 64 << 20, "bytes sent before the abort: {bytes}");
    let (_, _, body) = get(&format!("http://127.0.0.1:{}/metrics", agent.admin), &[]).await;
    assert!(String::from_utf8_lossy(&body).contains("videodelivery_agent_client_aborts_total 1"));
}

/// The text form is one readable line; sampling keeps every refusal; `--access-log=false` writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_form_sampling_and_off_switch() {
    let agent = start(&["--access-log-format=text", "--access-log-sample=0"]);
    agent.put("public/a.jpg", b"jpeg");
    for _ in 0..5 {
        let (status, _, _) = get(&format!("{}/videos/public/a.jpg", agent.base()), &[]).await;
        assert_eq!(status.as_u16(), 200);
    }
    let (status, _, _) =
        get(&format!("{}/videos/a.jpg?expires=1&kid=k&signature=TEXTSECRET", agent.base()), &[("x-request-id", "t-1")])
            .await;
    assert_eq!(status.as_u16(), 403);
    let until = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let line = agent.lines.recv_timeout(until.saturating_duration_since(Instant::now())).expect("a text line");
        if line.contains(" access ") {
            break line;
        }
    };
    assert!(line.contains(" t-1 \"GET /videos/a.jpg?expires=1&kid=k&signature=REDACTED HTTP/1.1\" 403 "), "{line}");
    assert!(line.contains("refusal="), "{line}");
    assert!(!agent.output().contains("TEXTSECRET"));
    // Sampled at 0: the five successful answers wrote nothing; only the refusal did.
    std::thread::sleep(Duration::from_millis(300));
    let others: Vec<String> = agent.lines.try_iter().filter(|l| l.contains(" access ")).collect();
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(agent.output().matches(" access ").count(), 1, "{}", agent.output());

    let off = start(&["--access-log=false"]);
    off.put("public/a.jpg", b"jpeg");
    let (status, head, _) = get(&format!("{}/videos/public/a.jpg", off.base()), &[("x-request-id", "off-1")]).await;
    assert_eq!((status.as_u16(), header(&head, "x-request-id")), (200, "off-1"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!off.output().contains("off-1"), "{}", off.output());
    let (_, _, body) = get(&format!("http://127.0.0.1:{}/metrics", off.admin), &[]).await;
    let metrics = String::from_utf8_lossy(&body).into_owned();
    let egress: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("videodelivery_agent_served_bytes_total{status_class=\"2xx\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(egress, 4, "egress is counted with the log off: {metrics}");
}

/// A slice read back from the disk tier (`--disk-cache-dir`) is logged as `cache: "disk"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_from_the_disk_tier_is_logged_as_disk() {
    let disk = tempfile::tempdir().unwrap();
    let agent = start(&[
        "--access-log-format=json",
        "--cache-size-mib=1",
        "--slice-size-kib=256",
        &format!("--disk-cache-dir={}", disk.path().display()),
        "--disk-cache-size-mib=64",
    ]);
    let slice = 256 * 1024;
    agent.put("films/a.mp4", &content(slice));
    agent.put("films/flood.mp4", &content(8 * slice));
    let film = agent.signed("/videos/films/a.mp4", Carrier::Query);
    // The disk has room: the first use writes it (read twice, as a viewer would).
    for _ in 0..2 {
        assert_eq!(get(&film, &[]).await.0.as_u16(), 200);
    }
    let metrics = format!("http://127.0.0.1:{}/metrics", agent.admin);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, m) = get(&metrics, &[]).await;
        if String::from_utf8_lossy(&m).contains("videodelivery_agent_disk_cache_writes_total 1") {
            break;
        }
        assert!(Instant::now() < until, "the slice was not written to disk");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Slices used more often take the four places of the memory cache (which evicts in the background).
    let flood = agent.signed("/videos/films/flood.mp4", Carrier::Query);
    for _ in 0..4 {
        for i in 0..8 {
            let range = format!("bytes={}-{}", i * slice, (i + 1) * slice - 1);
            for _ in 0..2 {
                assert_eq!(get(&flood, &[("range", &range)]).await.0.as_u16(), 206);
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (status, _, body) = get(&film, &[("x-request-id", "req-disk")]).await;
    assert_eq!((status.as_u16(), body.len()), (200, slice));
    let lines = agent.access_lines(3 + 64, Duration::from_secs(10));
    assert_eq!(line_with_id(&lines, "req-disk")["cache"], "disk", "{:#?}", line_with_id(&lines, "req-disk"));
}
