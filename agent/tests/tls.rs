//! HTTPS on the video port: HTTP/2 and HTTP/1.1 by ALPN, a certificate renewed the way a kubelet or cert-manager
//! renews a Secret served without a restart, bad renewals refused, stalled handshakes bounded by the header timeout,
//! and clear start-up errors. Real agent, real sockets, certificates from the `openssl` CLI, and curl as the client.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vd_token::{Carrier, Signer};

/// A test certificate authority in a temporary folder, and leaves for `localhost` and 127.0.0.1 signed by it.
struct Pki {
    dir: tempfile::TempDir,
    serial: std::cell::Cell<u32>,
}

/// A leaf certificate and its key, as PEM.
struct Leaf {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Leaf {
    fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(&self.cert).unwrap().as_ref().to_vec()
    }

    fn not_after(&self) -> i64 {
        let der = self.der();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.validity().not_after.timestamp()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl CLI runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "3",
                "-subj",
                "/CN=VideoDelivery test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Pki { dir, serial: std::cell::Cell::new(0x1000) }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A new key and a certificate for it with its own serial and common name, valid for `days`.
    fn leaf(&self, cn: &str, days: u32) -> Leaf {
        let serial = self.serial.get() + 1;
        self.serial.set(serial);
        let d = self.dir.path();
        std::fs::write(
            d.join(format!("{cn}.ext")),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
        )
        .unwrap();
        let (key, csr, crt, ext) = (format!("{cn}.key"), format!("{cn}.csr"), format!("{cn}.crt"), format!("{cn}.ext"));
        let subj = format!("/CN={cn}");
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subj,
            ],
        );
        let (serial, days) = (format!("{serial:#x}"), days.to_string());
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                &days,
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
        Leaf { cert: std::fs::read(d.join(crt)).unwrap(), key: std::fs::read(d.join(key)).unwrap() }
    }
}

/// The Secret volume: `tls.crt` and `tls.key` symlinks through `..data`, swapped like a kubelet swaps them.
struct Secret {
    dir: tempfile::TempDir,
}

impl Secret {
    fn new(leaf: &Leaf) -> Secret {
        let s = Secret { dir: tempfile::tempdir().unwrap() };
        s.publish(&leaf.cert, &leaf.key);
        s
    }

    fn publish(&self, cert: &[u8], key: &[u8]) {
        publish_secret(self.dir.path(), &[("tls.crt", cert), ("tls.key", key)]);
    }

    fn flags(&self) -> [String; 2] {
        let d = self.dir.path().display();
        [format!("--tls-cert={d}/tls.crt"), format!("--tls-key={d}/tls.key")]
    }
}

async fn start_tls(secret: &Secret, extra: &[&str]) -> TestAgent {
    let flags = secret.flags();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.push("--tls-poll=100ms");
    args.extend_from_slice(extra);
    TestAgent::start(&args).await
}

/// A signed `https://localhost:PORT/...` URL for `path`.
fn https_url(agent: &TestAgent, path: &str) -> String {
    let base = format!("https://localhost:{}", agent.addr.port());
    sign_with(&Signer::new(&agent.keyring).unwrap(), &base, path, Carrier::Query)
}

/// Runs curl against the agent (localhost pinned to the agent's address); returns status, HTTP version, body.
fn curl(agent: &TestAgent, ca: &Path, version: &str, range: &str, url: &str) -> (String, String, Vec<u8>) {
    let out_dir = tempfile::tempdir().unwrap();
    let body = out_dir.path().join("body");
    let resolve = format!("localhost:{}:127.0.0.1", agent.addr.port());
    let out = Command::new("curl")
        .args(["-sS", version, "--cacert"])
        .arg(ca)
        .args(["--resolve", &resolve, "-H", &format!("Range: {range}"), "-o"])
        .arg(&body)
        .args(["-w", "%{http_code} %{http_version}", url])
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let w = String::from_utf8(out.stdout).unwrap();
    let (code, v) = w.split_once(' ').unwrap();
    (code.to_owned(), v.to_owned(), std::fs::read(body).unwrap())
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection that trusts only the test CA, offering `alpn`.
async fn tls_connect(addr: SocketAddr, ca: &Path, alpn: &[&[u8]]) -> std::io::Result<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

fn served_cert(s: &Tls) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

/// Waits until a new connection is served `want`; false if it is not within `within`.
async fn new_connections_get(addr: SocketAddr, ca: &Path, want: &[u8], within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if served_cert(&tls_connect(addr, ca, &[b"http/1.1"]).await.unwrap()) == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// One keep-alive HTTP/1.1 GET with a Range on an open connection: status code and body.
async fn h1_get(s: &mut Tls, target: &str, range: &str) -> (u16, Vec<u8>) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nRange: {range}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before the response headers");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap();
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = vec![0u8; len - body.len()];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    (status, body)
}

/// The path and query of a signed URL.
fn target(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_owned()
}

fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn https_answers_ranges_over_http2_and_http1() {
    let pki = Pki::new();
    let leaf = pki.leaf("agent-one", 1);
    let secret = Secret::new(&leaf);
    let agent = start_tls(&secret, &[]).await;
    let data = content(300_000);
    agent.put("v/a.mp4", &data);
    let url = https_url(&agent, "/videos/v/a.mp4");

    let (code, version, body) = curl(&agent, &pki.ca(), "--http2", "bytes=1000-200999", &url);
    assert_eq!((code.as_str(), version.as_str()), ("206", "2"), "HTTP/2 over TLS");
    assert_eq!(body, &data[1000..201_000]);
    let (code, version, body) = curl(&agent, &pki.ca(), "--http1.1", "bytes=-500", &url);
    assert_eq!((code.as_str(), version.as_str()), ("206", "1.1"), "HTTP/1.1 over TLS");
    assert_eq!(body, &data[data.len() - 500..]);

    // Cleartext on the TLS port is a failed handshake, not a request; the admin port stays cleartext.
    assert!(client().get(agent.url("/videos/v/a.mp4").parse().unwrap()).await.is_err());
    let metrics = agent.metrics().await;
    let expiry = metric(&metrics, "videodelivery_agent_tls_cert_expiry_timestamp_seconds");
    assert_eq!(expiry, Some(leaf.not_after() as f64), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_reaches_new_connections_while_open_ones_continue() {
    let pki = Pki::new();
    let (first, second) = (pki.leaf("agent-first", 1), pki.leaf("agent-second", 2));
    let secret = Secret::new(&first);
    let agent = start_tls(&secret, &[]).await;
    let data = content(100_000);
    agent.put("v/a.mp4", &data);
    let path = target(&https_url(&agent, "/videos/v/a.mp4"));

    let mut open = tls_connect(agent.addr, &pki.ca(), &[b"http/1.1"]).await.unwrap();
    assert_eq!(served_cert(&open), first.der());
    assert_eq!(h1_get(&mut open, &path, "bytes=0-99").await, (206, data[..100].to_vec()));

    secret.publish(&second.cert, &second.key);
    let started = Instant::now();
    assert!(
        new_connections_get(agent.addr, &pki.ca(), &second.der(), Duration::from_secs(5)).await,
        "new connections still get the old certificate"
    );
    eprintln!("renewed certificate served after {:?}", started.elapsed());
    // The connection opened before the renewal keeps its session and keeps being served.
    assert_eq!(h1_get(&mut open, &path, "bytes=100-50099").await, (206, data[100..50_100].to_vec()));
    let (code, version, body) = curl(&agent, &pki.ca(), "--http2", "bytes=0-9", &https_url(&agent, "/videos/v/a.mp4"));
    assert_eq!((code.as_str(), version.as_str(), body.as_slice()), ("206", "2", &data[..10]));

    let metrics = agent.metrics().await;
    assert_eq!(metric(&metrics, "videodelivery_agent_tls_cert_reloads_total"), Some(1.0), "{metrics}");
    let expiry = metric(&metrics, "videodelivery_agent_tls_cert_expiry_timestamp_seconds");
    assert_eq!(expiry, Some(second.not_after() as f64));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_renewal_is_refused_and_the_last_good_certificate_keeps_serving() {
    let pki = Pki::new();
    let (good, other, next) = (pki.leaf("agent-good", 1), pki.leaf("agent-other", 1), pki.leaf("agent-next", 1));
    let secret = Secret::new(&good);
    let agent = start_tls(&secret, &[]).await;
    let errors = || async { metric(&agent.metrics().await, "videodelivery_agent_tls_cert_reload_errors_total") };

    // A certificate whose key is another's, then a certificate file that is not PEM at all.
    for (cert, key, refused) in
        [(&other.cert[..], &good.key[..], 1.0), (&b"not a certificate\n"[..], &good.key[..], 2.0)]
    {
        secret.publish(cert, key);
        let until = Instant::now() + Duration::from_secs(5);
        while errors().await != Some(refused) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(errors().await, Some(refused), "the bad pair is counted once");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(errors().await, Some(refused), "a bad pair is counted once, not once per poll");
        let s = tls_connect(agent.addr, &pki.ca(), &[b"h2"]).await.unwrap();
        assert_eq!(served_cert(&s), good.der(), "the last good certificate is still served");
    }

    secret.publish(&next.cert, &next.key);
    assert!(new_connections_get(agent.addr, &pki.ca(), &next.der(), Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_that_stalls_is_closed_after_the_header_timeout_and_frees_its_slot() {
    let pki = Pki::new();
    let secret = Secret::new(&pki.leaf("agent", 1));
    let agent = start_tls(&secret, &["--header-timeout=1s", "--max-connections=1", "--public-prefix=/videos/"]).await;
    agent.put("a.txt", b"x");

    // A ClientHello record header announcing 512 bytes, and then nothing: the handshake can never complete.
    let mut stalled = std::net::TcpStream::connect(agent.addr).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut stalled, Duration::from_secs(4)), "a stalled handshake stays open");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "closed after {took:?}");

    // Its slot is free again: the only one the cap allows.
    let mut s = tls_connect(agent.addr, &pki.ca(), &[b"http/1.1"]).await.unwrap();
    assert_eq!(h1_get(&mut s, "/videos/a.txt", "bytes=0-0").await, (206, b"x".to_vec()));
    drop(s);

    // Silent from the first byte, and silent after a complete handshake: both bounded the same way.
    let mut silent = std::net::TcpStream::connect(agent.addr).unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(4)), "a silent connection stays open");
    drop(silent);
    let mut after = tls_connect(agent.addr, &pki.ca(), &[b"http/1.1"]).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(4), after.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a silent TLS client stays open: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_idle_tls_connections_and_ends_without_waiting_out_the_grace() {
    let pki = Pki::new();
    let secret = Secret::new(&pki.leaf("agent", 1));
    let mut agent =
        start_tls(&secret, &["--shutdown-delay=0s", "--shutdown-grace=20s", "--public-prefix=/videos/"]).await;
    agent.put("a.txt", b"x");
    let mut s = tls_connect(agent.addr, &pki.ca(), &[b"http/1.1"]).await.unwrap();
    assert_eq!(h1_get(&mut s, "/videos/a.txt", "bytes=0-0").await, (206, b"x".to_vec()));
    agent.stop();
    let done = &mut agent.done;
    tokio::time::timeout(Duration::from_secs(5), done).await.expect("the agent stops before the grace ends").unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf).await, Ok(0) | Err(_)), "the idle TLS connection is closed");
}

/// Runs the agent binary with `args` (a storage folder and keyring added) and returns its stderr; it must fail.
fn agent_fails(args: &[String], env: &[(&str, &str)]) -> String {
    let media = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_videodelivery-agent"))
        .args(["--listen=127.0.0.1:0", "--admin-listen=127.0.0.1:0"])
        .arg(format!("--storage=file://{}", media.path().display()))
        .arg("--keyring=/nonexistent/keyring.json")
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the agent started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn starting_without_a_usable_pair_fails_with_a_clear_message() {
    let pki = Pki::new();
    let (leaf, other) = (pki.leaf("agent", 1), pki.leaf("other", 1));
    let secret = Secret::new(&leaf);
    let [cert, key] = secret.flags();

    let err = agent_fails(std::slice::from_ref(&cert), &[]);
    assert!(err.contains("--tls-key"), "{err}");
    let err = agent_fails(&[], &[("VD_TLS_KEY", secret.dir.path().join("tls.key").to_str().unwrap())]);
    assert!(err.contains("--tls-cert"), "{err}");

    let err = agent_fails(&["--tls-cert=/nonexistent/tls.crt".into(), key.clone()], &[]);
    assert!(err.contains("cannot read /nonexistent/tls.crt"), "{err}");
    let unreadable = tempfile::tempdir().unwrap();
    let err = agent_fails(&[cert.clone(), format!("--tls-key={}", unreadable.path().display())], &[]);
    assert!(err.contains("cannot read") && err.contains(&unreadable.path().display().to_string()), "{err}");

    secret.publish(&other.cert, &leaf.key);
    let err = agent_fails(&[cert.clone(), key.clone()], &[]);
    assert!(err.contains("does not match the certificate"), "{err}");
    secret.publish(&leaf.cert, b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n");
    let err = agent_fails(&[cert, key], &[]);
    assert!(err.contains("tls.key") && err.contains("no PEM private key"), "{err}");
    assert!(!err.contains("not base64"), "the key file's content is never printed: {err}");
}
