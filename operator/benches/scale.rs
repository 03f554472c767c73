//! Scale: N VideoDeliveries in M namespaces against the real control plane, all the way to Ready (the bench acts
//! as the kubelet and marks the agents' pods ready). Prints the time and the operator's peak memory as Markdown.
//! Run: `cargo bench -p videodelivery-operator --bench scale` (VD_SCALE_OBJECTS, VD_SCALE_NAMESPACES to change).

use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams, PostParams};
use vd_testsupport::{ControlPlane, Process};
use videodelivery_operator::crd::VideoDelivery;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Peak resident memory of a process in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches asks for the list of benchmarks.
    }
    let objects = env_or("VD_SCALE_OBJECTS", 200);
    let namespaces = env_or("VD_SCALE_NAMESPACES", 20);
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let mut nss = Vec::new();
    for _ in 0..namespaces {
        nss.push(cp.namespace("scale").await.unwrap());
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_videodelivery-operator"));
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    cmd.env("KUBECONFIG", cp.kubeconfig()).env("RUST_LOG", "warn").arg(format!("--admin-listen={admin}"));
    let operator = Process::spawn(cmd, cp.dir().join("operator-scale.log")).unwrap();

    let start = Instant::now();
    for i in 0..objects {
        let ns = &nss[i % namespaces];
        let api: Api<VideoDelivery> = Api::namespaced(client.clone(), ns);
        let spec = serde_json::from_value(serde_json::json!({"storage": {"url": "s3://videos"}})).unwrap();
        api.create(&PostParams::default(), &VideoDelivery::new(&format!("vd-{i}"), spec)).await.unwrap();
    }
    let created = start.elapsed();
    let all: Api<VideoDelivery> = Api::all(client.clone());
    let mut keys_ready_at = None;
    loop {
        for ns in &nss {
            vd_testsupport::mark_pods_ready(&client, ns, "app.kubernetes.io/name=videodelivery-agent").await.unwrap();
        }
        let list = all.list(&ListParams::default()).await.unwrap().items;
        let cond = |v: &VideoDelivery, t: &str| {
            v.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == t && c.status == "True"))
        };
        let keys = list.iter().filter(|v| cond(v, "KeysReady")).count();
        let ready = list.iter().filter(|v| cond(v, "Ready")).count();
        if keys == objects && keys_ready_at.is_none() {
            keys_ready_at = Some(start.elapsed());
        }
        if ready == objects {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "only {ready}/{objects} Ready after 10 minutes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_ready = start.elapsed();
    let peak = peak_rss_mib(operator.pid());
    // What a user sees, for the README.
    let get = Command::new(vd_testsupport::binary("kubectl").unwrap())
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(["get", "vd", "-n", &nss[0]])
        .output()
        .unwrap();
    eprintln!("$ kubectl get vd\n{}", String::from_utf8_lossy(&get.stdout));
    println!(
        "| VideoDeliveries | namespaces | created in | all KeysReady | all Ready (pods marked ready by the bench) | operator peak RSS |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {objects} | {namespaces} | {:.1} s | {:.1} s | {:.1} s | {peak:.1} MiB |",
        created.as_secs_f64(),
        keys_ready_at.unwrap_or_default().as_secs_f64(),
        all_ready.as_secs_f64()
    );
}
