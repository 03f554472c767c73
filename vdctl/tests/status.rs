//! `vdctl status` against the real API server: the VideoDelivery's keys and agent counts from its status, and live
//! traffic scraped from a real agent's /metrics through the API server's pod proxy. No kubelet runs here, so the
//! test does the kubelet's part: it starts the agent binary itself and reports the pod Running at an address of
//! this machine (the API server refuses to proxy to loopback, so a non-loopback one).

use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use vd_testsupport::{ControlPlane, Process};
use vd_token::{Carrier, Signer, UrlRequest};
use videodelivery_operator::crd::VideoDelivery;

fn vdctl(cp: &ControlPlane, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdctl")).env("KUBECONFIG", cp.kubeconfig()).args(args).output().unwrap()
}

fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// An address of this machine other than loopback: the source address of a route out (a UDP connect sends
/// nothing).
fn host_address() -> IpAddr {
    for target in ["192.0.2.1:9", "10.255.255.254:9", "8.8.8.8:53"] {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        if s.connect(target).is_ok()
            && let Ok(a) = s.local_addr()
            && !a.ip().is_loopback()
            && !a.ip().is_unspecified()
        {
            return a.ip();
        }
    }
    panic!("this machine has no IPv4 address besides loopback for the API server to proxy to");
}

fn agent_binary() -> std::path::PathBuf {
    // target/debug/deps/status-xxxx -> target/debug/videodelivery-agent
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("videodelivery-agent");
    assert!(bin.exists(), "{} is missing: build it with `cargo build -p videodelivery-agent`", bin.display());
    bin
}

async fn http_get(url: &str) {
    // One request on its own connection; the status does not matter here, the agent's counters do.
    let u = url.strip_prefix("http://").unwrap();
    let (host, path) = u.split_at(u.find('/').unwrap());
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host)).await else {
        return;
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes=0-65535\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_ok() {
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_keys_agents_and_live_traffic_read_through_the_pod_proxy() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("status").await.unwrap();

    // The VideoDelivery, with the status an operator would have written.
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    let spec = serde_json::from_value(serde_json::json!({"storage": {"url": "s3://videos"}})).unwrap();
    vds.create(&PostParams::default(), &VideoDelivery::new("media", spec)).await.unwrap();
    let status = serde_json::json!({"status": {
        "conditions": [{"type": "Ready", "status": "False", "reason": "AgentsNotReady",
                        "message": "1 of 2 agents ready", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "activeKeyId": "k-active",
        "nextRotationTime": "2026-01-08T00:00:00Z",
        "keys": [
            {"id": "k-active", "state": "active", "created": "2026-01-01T00:00:00Z"},
            {"id": "k-next", "state": "pending", "created": "2026-01-07T23:58:00Z", "until": "2026-01-08T00:00:00Z"},
        ],
        "desiredAgents": 2,
        "readyAgents": 1,
    }});
    vds.patch_status("media", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();

    // A real agent, its admin port where the pod's IP says.
    let ip = host_address();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("media")).unwrap();
    std::fs::write(dir.path().join("media/a.mp4"), vec![7u8; 256 * 1024]).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let ring = vd_token::rotation::generate(now, &mut vd_token::rotation::os_random).unwrap();
    std::fs::write(dir.path().join("keyring.json"), ring.to_json()).unwrap();
    let (port, admin) = (free_port("127.0.0.1".parse().unwrap()), free_port(ip));
    let mut cmd = Command::new(agent_binary());
    cmd.arg(format!("--storage=file://{}", dir.path().join("media").display()))
        .arg(format!("--keyring={}", dir.path().join("keyring.json").display()))
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--admin-listen={ip}:{admin}"))
        .arg("--rate-limit=0");
    let agent = Process::spawn(cmd, dir.path().join("agent.log")).unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect((ip, admin)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "the agent did not listen: {}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "media-agent-0", "labels": {
            "app.kubernetes.io/name": "videodelivery-agent", "app.kubernetes.io/instance": "media"}},
        "spec": {"containers": [{"name": "agent", "image": "agent", "ports": [{"name": "admin", "containerPort": admin}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = serde_json::json!({"status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    pods.patch_status("media-agent-0", &PatchParams::default(), &Patch::Merge(&running)).await.unwrap();

    // Viewers while vdctl measures: signed range requests (cache hits after the first) and forged ones.
    let base = format!("http://127.0.0.1:{port}");
    let signed = Signer::new(&ring)
        .unwrap()
        .url(&UrlRequest {
            base_url: &base,
            path: "/videos/a.mp4",
            exp: now + 600,
            nbf: None,
            prefix: None,
            ip: None,
            carrier: Carrier::Query,
        })
        .unwrap();
    // One character of the signature changed: well-formed, but not what the key signs (bad_signature).
    let forged = {
        let at = signed.find("signature=").unwrap() + "signature=".len();
        let swap = if &signed[at..at + 1] == "A" { "B" } else { "A" };
        let mut f = signed.clone();
        f.replace_range(at..at + 1, swap);
        f
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                http_get(&signed).await;
                http_get(&forged).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let out = {
        let cp_kubeconfig = cp.kubeconfig().to_owned();
        let ns = ns.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_vdctl"))
                .env("KUBECONFIG", cp_kubeconfig)
                .args(["status", "media", "-n", &ns, "--interval", "2s"])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("vdctl status printed:\n{text}");
    assert!(out.status.success(), "{text}{}\nagent log:\n{}", String::from_utf8_lossy(&out.stderr), agent.log());
    for want in [
        &format!("VideoDelivery {ns}/media: Ready=False AgentsNotReady: 1 of 2 agents ready") as &str,
        "Keys (next rotation 2026-01-08T00:00:00Z):",
        "k-active                 active    created 2026-01-01T00:00:00Z",
        "k-next                   pending   created 2026-01-07T23:58:00Z, active from 2026-01-08T00:00:00Z",
        "Agents: 1/2 ready",
        "pods: media-agent-0 Running, ready",
        "from 1 of 1 agents:",
        "refusals          bad_signature ",
        "206: ",
        "403: ",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    // Bytes went out while it measured: the egress line is not zero.
    let egress = text.lines().find(|l| l.trim_start().starts_with("egress")).unwrap();
    assert!(!egress.contains(" 0 B/s"), "{text}");
    let hit = text.lines().find(|l| l.contains("cache hit ratio")).unwrap();
    assert!(hit.contains('%'), "{text}");
    drop(agent);

    // Without the pod's agent answering, the line says why instead of failing the command.
    let gone = vdctl(cp, &["status", "media", "-n", &ns, "--interval", "1s"]);
    let text = String::from_utf8_lossy(&gone.stdout);
    assert!(gone.status.success(), "{text}");
    assert!(text.contains("from 0 of 1 agents") && text.contains("media-agent-0: no metrics: "), "{text}");

    let missing = vdctl(cp, &["status", "nope", "-n", &ns, "--no-traffic"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains(&format!("VideoDelivery {ns}/nope not found")),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
