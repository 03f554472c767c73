//! A real agent on loopback, a real keyring laid out the way a kubelet mounts a Secret, and a plain HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use vd_token::rotation::{generate, os_random};
use vd_token::{Carrier, Keyring, Signer, UrlRequest};
use videodelivery_agent::Agent;
use videodelivery_agent::config::Config;

pub struct TestAgent {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub media: tempfile::TempDir,
    pub secret_dir: tempfile::TempDir,
    pub keyring: Keyring,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<()>,
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn new_keyring() -> Keyring {
    generate(now(), &mut os_random).unwrap()
}

/// Writes `keyring.json` as a kubelet does for a Secret volume: the data in a timestamped folder, `..data` a symlink
/// to it, swapped atomically by a rename, and `keyring.json` a symlink through `..data`.
pub fn publish_keyring(dir: &Path, ring: &Keyring) {
    let stamp = format!("..{}", std::time::SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos());
    std::fs::create_dir(dir.join(&stamp)).unwrap();
    std::fs::write(dir.join(&stamp).join("keyring.json"), ring.to_json()).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("keyring.json");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/keyring.json", &link).unwrap();
    }
}

impl TestAgent {
    pub async fn start(extra: &[&str]) -> TestAgent {
        let media = tempfile::tempdir().unwrap();
        Self::start_with(media, extra, None).await
    }

    /// `storage` overrides `file://{media}` (for S3 tests).
    pub async fn start_with(media: tempfile::TempDir, extra: &[&str], storage: Option<String>) -> TestAgent {
        let secret_dir = tempfile::tempdir().unwrap();
        let keyring = new_keyring();
        publish_keyring(secret_dir.path(), &keyring);
        let storage = storage.unwrap_or_else(|| format!("file://{}", media.path().display()));
        let keyring_path = secret_dir.path().join("keyring.json");
        let mut args = vec![
            "videodelivery-agent".to_owned(),
            "--listen=127.0.0.1:0".into(),
            "--admin-listen=127.0.0.1:0".into(),
            format!("--storage={storage}"),
            format!("--keyring={}", keyring_path.display()),
            "--keyring-poll=100ms".into(),
            "--rate-limit=0".into(),
            // In-process agents would write to the test binary's stdout; tests of the log run the real binary.
            "--access-log=false".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = Config::try_parse_from(args).unwrap();
        let agent = Agent::bind(config).await.unwrap();
        let (addr, admin) = (agent.addr, agent.admin_addr);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(agent.serve(async move {
            let _ = rx.await;
        }));
        TestAgent { addr, admin, media, secret_dir, keyring, stop: Some(tx), done }
    }

    pub fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.media.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A URL signed with the agent's active key; `path` is the decoded path under /videos.
    pub fn signed(&self, path: &str, carrier: Carrier) -> String {
        sign_with(&Signer::new(&self.keyring).unwrap(), &format!("http://{}", self.addr), path, carrier)
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn metrics(&self) -> String {
        let (_, _, body) = get(&format!("http://{}/metrics", self.admin), &[]).await;
        String::from_utf8(body.to_vec()).unwrap()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.stop();
        self.done.abort();
    }
}

pub fn sign_with(signer: &Signer, base: &str, path: &str, carrier: Carrier) -> String {
    let req = UrlRequest { base_url: base, path, exp: now() + 600, nbf: None, prefix: None, ip: None, carrier };
    signer.url(&req).unwrap()
}

/// Deterministic content, so a wrong offset shows as a mismatch.
pub fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7919) % 251) as u8).collect()
}

pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client().request(b.body(Empty::new()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
    request("GET", url, headers).await
}

pub fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

pub fn reason(body: &Bytes) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["reason"].as_str().unwrap().to_owned()
}

/// A real S3 server (versitygw), with the AWS settings the agent's S3 client reads set for this process.
pub fn s3_server() -> vd_testsupport::S3Server {
    // SAFETY: every test sets the same values, before its agent starts; object_store reads them only while
    // building its client.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", vd_testsupport::S3Server::ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", vd_testsupport::S3Server::SECRET_KEY);
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    vd_testsupport::S3Server::start().unwrap()
}

/// An agent serving `storage` (`s3://bucket[/prefix]`) from `s3`, path-style.
pub async fn start_on_s3(s3: &vd_testsupport::S3Server, storage: &str, extra: &[&str]) -> TestAgent {
    let endpoint = format!("--s3-endpoint={}", s3.endpoint);
    let mut args = vec![endpoint.as_str(), "--s3-path-style"];
    args.extend_from_slice(extra);
    TestAgent::start_with(tempfile::tempdir().unwrap(), &args, Some(storage.to_owned())).await
}

/// Writes files as a kubelet does for any Secret volume (like [`publish_keyring`]): a new timestamped folder, `..data`
/// swapped to it by a rename, and each name a symlink through `..data`. Returns the path of each file.
pub fn publish_secret(dir: &Path, files: &[(&str, &[u8])]) -> Vec<PathBuf> {
    let stamp = format!("..{}", std::time::SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos());
    std::fs::create_dir(dir.join(&stamp)).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(&stamp).join(name), bytes).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    files
        .iter()
        .map(|(name, _)| {
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
            link
        })
        .collect()
}

/// Whether the server closes the connection within `within` (a read returns end-of-file or a reset).
pub fn closed_within(s: &mut std::net::TcpStream, within: std::time::Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}
