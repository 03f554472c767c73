//! On a real node (kubelet, containerd, runc, kube-proxy, kube-scheduler; see `vd_testsupport::Node`): the chart
//! installed with `helm install`, the operator and the agents running as pods from images built by
//! `scripts/images.sh`, the example backend (examples/backend) as a pod that signs with the keyring Secret mounted
//! into it, range requests with the URLs it mints through the agents' Service (ClusterIP and NodePort), a rolling
//! update and a key rotation under steady traffic without one failed request, the PDB holding an eviction,
//! viewers over HTTPS through Traefik (an HTTPRoute and an Ingress the operator makes), and `helm upgrade` and
//! `helm uninstall`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{eventually, selector};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use vd_testsupport::{Node, NodeOptions, S3Server};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/videodelivery");

/// Every timing the scenarios depend on, in one place.
///
/// kubelet rewrites a pod's Secret volume when it resyncs the pod: every `syncFrequency`, plus up to half of it as
/// jitter (`workerResyncIntervalJitterFactor` 0.5 in kubelet 1.35), so a keyring change reaches the agents at most
/// about 1.5 × SYNC (+ 1 s of kubelet's sync tick, + the agent's 1 s file poll) after the operator writes it. The
/// test shortens SYNC from kubelet's default 60 s to 10 s (worst case about 17 s) so that two rotations fit in two
/// minutes, and keeps `propagationDelay` (25 s) above that worst case. With the defaults the same bound is about
/// 92 s (68 s was measured on this kind of machine), which a production `propagationDelay` must exceed.
mod timing {
    use std::time::Duration;
    pub const KUBELET_SYNC: Duration = Duration::from_secs(10);
    /// Key publication happens `ROTATION_INTERVAL - PROPAGATION_DELAY` after the previous one.
    pub const SIGNING: &str = "{rotationInterval: 45s, propagationDelay: 25s, maxTokenLifetime: 10s, clockSkew: 2s}";
    /// The lifetime of the tokens the backend mints: the maximum the spec allows.
    pub const TOKEN_LIFETIME: u64 = 10;
    /// How often the clients ask the backend for a URL and send a range request with it.
    pub const REQUEST_EVERY: Duration = Duration::from_millis(100);
    /// Longest wait for any pod or rollout.
    pub const POD_READY: Duration = Duration::from_secs(180);
    /// The chart's documented lab setting that lowers the production floors on signing timings (propagationDelay
    /// 2m, maxTokenLifetime 1m, rotationInterval 1h), on the CRD and the operator alike, so SIGNING is accepted.
    pub const FLOORS: &str =
        "signingFloors.propagationDelay=20s,signingFloors.tokenLifetime=5s,signingFloors.rotationInterval=30s";
}

fn film(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8).collect()
}

/// The binaries this test binary was built with (target/debug), which the images are made from.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    for b in ["videodelivery-agent", "videodelivery-operator"] {
        assert!(dir.join(b).exists(), "{} is missing: `cargo build --workspace --bins` first", dir.join(b).display());
    }
    dir
}

/// The node of this test binary with the agent, operator and example backend images imported (once).
fn node() -> &'static Node {
    static IMPORTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let node = Node::shared(&NodeOptions { sync_frequency: timing::KUBELET_SYNC });
    IMPORTED.get_or_init(|| {
        node.import_images(&["agent", "operator", "backend"], Some(&bin_dir())).unwrap();
    });
    node
}

fn helm(node: &Node, args: &[&str]) -> String {
    let cp = node.control_plane();
    let out = Command::new(vd_testsupport::binary("helm").unwrap())
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(args)
        .env("HELM_CACHE_HOME", cp.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", cp.dir().join("helm/config"))
        .env("HELM_DATA_HOME", cp.dir().join("helm/data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "helm {args:?}: {}\n{}", String::from_utf8_lossy(&out.stderr), node.log_tails());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host PID of each running container named `container` in `namespace` (we are on the node).
fn container_pids(node: &Node, namespace: &str, container: &str) -> Vec<i32> {
    let list = node
        .crictl(&[
            "ps",
            "-o",
            "json",
            "--state",
            "running",
            "--name",
            &format!("^{container}$"),
            "--label",
            &format!("io.kubernetes.pod.namespace={namespace}"),
        ])
        .unwrap();
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    list["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let id = c["id"].as_str().unwrap();
            let info: serde_json::Value =
                serde_json::from_str(&node.crictl(&["inspect", "-o", "json", id]).unwrap()).unwrap();
            info["info"]["pid"].as_i64().unwrap() as i32
        })
        .collect()
}

/// What a user checks of a running container: its user, and whether its root filesystem is read-only.
fn process_identity(pid: i32) -> (String, bool) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo.lines().find(|l| l.split(' ').nth(4) == Some("/")).unwrap();
    let read_only = root.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro");
    (uid, read_only)
}

async fn ready_pods(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    let list = pods.list(&ListParams::default().labels(selector)).await.map(|l| l.items).unwrap_or_default();
    list.into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// Four seconds of test pattern as HLS (fMP4 segments of one second, one rendition) under `dir`.
fn make_hls(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("ffmpeg")
        .current_dir(dir)
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25"])
        .args(["-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25"])
        .args(["-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod", "-hls_segment_type", "fmp4"])
        .args(["-hls_segment_filename", "seg%d.m4s", "index.m3u8"])
        .output()
        .expect("ffmpeg (scripts/setup.sh installs it)");
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::set_permissions(e.unwrap().path(), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// A 4 s MP4 (H.264, moov first, so a player starts from the first ranges), made by ffmpeg.
fn make_mp4() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("ffmpeg")
        .current_dir(dir.path())
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25"])
        .args(["-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25"])
        .args(["-movflags", "+faststart", "play.mp4"])
        .output()
        .expect("ffmpeg (scripts/setup.sh installs it)");
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(dir.path().join("play.mp4")).unwrap()
}

/// Runs tests/browser/play.mjs (Debian's Chromium through Playwright, the page served on 127.0.0.1:`port`).
fn play_in_chromium(port: u16, scenarios: serde_json::Value) -> Vec<serde_json::Value> {
    play_in_chromium_with(serde_json::json!({ "port": port, "scenarios": scenarios }))
}

/// Runs tests/browser/play.mjs on a player page served elsewhere (`page`, the URL of a copy of player.html).
fn play_on_page(page: &str, scenarios: serde_json::Value) -> Vec<serde_json::Value> {
    play_in_chromium_with(serde_json::json!({ "port": common::free_port(), "pageUrl": page, "scenarios": scenarios }))
}

/// play.mjs with a whole config (its header says what `ca`, `hosts`, `page` and `pageUrl` do). One Chromium at a
/// time: two at once starve the other scenarios' clients on a small machine.
fn play_in_chromium_with(config: serde_json::Value) -> Vec<serde_json::Value> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    assert!(dir.join("node_modules/playwright-core").exists(), "run scripts/setup.sh (npm ci in tests/browser)");
    let config = config.to_string();
    let out = Command::new("node").current_dir(&dir).arg("play.mjs").arg(config).output().unwrap();
    assert!(out.status.success(), "play.mjs: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The example backend's image, as scripts/images.sh names it (Chart.yaml's appVersion).
const BACKEND_IMAGE: &str = "ghcr.io/videodelivery/example-backend:0.1.0";

/// Deploys the example backend (examples/backend) beside the VideoDelivery `vd`, as its README says: a Deployment
/// (non-root, read-only root filesystem) with the keyring Secret `{vd}-keyring` mounted read-only at
/// /var/run/videodelivery, and a ClusterIP Service `{vd}-backend` on port 80. URLs it mints are valid `lifetime`
/// seconds. Waits for the Secret (the operator's first write) so the pod never waits for its volume.
async fn deploy_backend(client: &Client, ns: &str, vd: &str, lifetime: u64) {
    let name = format!("{vd}-backend");
    eventually(&format!("the keyring of {vd}"), Duration::from_secs(60), || common::keyring(client, ns, vd)).await;
    let labels = serde_json::json!({"app.kubernetes.io/name": "example-backend", "app.kubernetes.io/instance": vd});
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 5,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "backend",
                        "image": BACKEND_IMAGE,
                        "imagePullPolicy": "Never",
                        "env": [{"name": "VD_TOKEN_LIFETIME", "value": lifetime.to_string()}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz", "port": "http"},
                            "periodSeconds": 1,
                        },
                        "securityContext": {
                            "readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [{"name": "keyring", "mountPath": "/var/run/videodelivery", "readOnly": true}],
                    }],
                    "volumes": [{
                        "name": "keyring",
                        "secret": {
                            "secretName": format!("{vd}-keyring"),
                            "items": [{"key": "keyring.json", "path": "keyring.json"}],
                        },
                    }],
                },
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns).create(&PostParams::default(), &deployment).await.unwrap();
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns).create(&PostParams::default(), &service).await.unwrap();
}

/// The example backend of `vd` (see [`deploy_backend`]) once its pod is Ready and kube-proxy routes its Service.
async fn running_backend(client: &Client, ns: &str, vd: &str) -> Backend {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("app.kubernetes.io/name=example-backend,app.kubernetes.io/instance={vd}");
    settle(&format!("the backend of {vd} Ready"), timing::POD_READY, || async {
        (!ready_pods(&pods, &selector).await.is_empty()).then_some(())
    })
    .await;
    let svc = Api::<Service>::namespaced(client.clone(), ns).get(&format!("{vd}-backend")).await.unwrap();
    let ip = svc.spec.unwrap().cluster_ip.unwrap();
    wait_programmed(&ip);
    // A connection per question, so a connection the backend closed after its keep-alive timeout is never reused.
    let http = HttpClient::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http();
    Backend { url: format!("http://{ip}"), http }
}

/// What the browser does first: asks the backend (through its Service) for a signed URL.
#[derive(Clone)]
struct Backend {
    url: String,
    http: Http,
}

impl Backend {
    /// A URL for `path` on the agents at `base`, signed with `carrier` (query, token, path; `&prefix=1` for a
    /// folder): (the key id it says it used, URL).
    async fn sign_with(&self, base: &str, path: &str, carrier: &str) -> Result<(String, String), String> {
        self.sign_counting_retries(base, path, carrier).await.map(|(signed, _)| signed)
    }

    /// Asks up to three times, each on a new connection, when the backend gives no answer within 5 s, as a
    /// player's page would: on two shared cores the example backend (not the agents under test) sometimes misses
    /// one. Any answer that is not a URL fails at once. Also says how many questions went unanswered.
    async fn sign_counting_retries(
        &self,
        base: &str,
        path: &str,
        carrier: &str,
    ) -> Result<((String, String), u32), String> {
        let uri = format!("{}/url?path={}&base={}&carrier={carrier}", self.url, query_escape(path), query_escape(base));
        let mut unanswered = 0;
        let resp = loop {
            let req = http::Request::get(&uri).body(Empty::new()).unwrap();
            match tokio::time::timeout(Duration::from_secs(5), self.http.request(req)).await {
                Ok(resp) => break resp.map_err(|e| format!("backend: {e:?}"))?,
                Err(_) if unanswered < 2 => unanswered += 1,
                Err(_) => return Err("backend: no answer within 5s, three times".to_string()),
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| format!("backend body: {e}"))?.to_bytes();
        if parts.status != 200 {
            return Err(format!("backend: {} {}", parts.status, String::from_utf8_lossy(&body)));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("backend: {e}"))?;
        match (answer["kid"].as_str(), answer["url"].as_str()) {
            (Some(kid), Some(url)) => Ok(((kid.to_string(), url.to_string()), unanswered)),
            _ => Err(format!("backend: no kid and url in {answer}")),
        }
    }

    /// A URL signed with the query carrier, for setup steps: a failure fails the test.
    async fn url(&self, base: &str, path: &str) -> String {
        self.url_with(base, path, "query").await
    }

    /// Like [`Backend::sign_with`], for setup steps: a failure fails the test.
    async fn url_with(&self, base: &str, path: &str, carrier: &str) -> String {
        self.sign_with(base, path, carrier).await.unwrap_or_else(|e| panic!("{path} on {base}: {e}")).1
    }
}

/// `s` as a query parameter value: everything but the unreserved characters percent-encoded.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

type Http = HttpClient<HttpConnector, Empty<Bytes>>;

/// Two clients: one opens a connection per request (like curl), one keeps connections alive (like a CDN or a
/// browser), so a rollout is tested for both.
fn clients() -> [Http; 2] {
    let fresh = HttpClient::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http();
    let pooled = HttpClient::builder(TokioExecutor::new()).build_http();
    [fresh, pooled]
}

/// One signed range request; Err describes a failure (status, body, or transport error).
async fn fetch_range(
    http: &Http,
    url: &str,
    offset: usize,
    len: usize,
    want: &[u8],
) -> Result<http::HeaderMap, String> {
    let range = format!("bytes={offset}-{}", offset + len - 1);
    let req = http::Request::get(url).header("range", &range).body(Empty::new()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), http.request(req))
        .await
        .map_err(|_| "no answer within 5s".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    if parts.status != 206 {
        return Err(format!("{} {}", parts.status, String::from_utf8_lossy(&body)));
    }
    if body[..] != want[offset..offset + len] {
        return Err(format!("wrong bytes for {range}"));
    }
    Ok(parts.headers)
}

/// The first request to a Service: like [`fetch_range`], once kube-proxy has programmed it (see
/// [`service_addresses`]).
async fn first_fetch(http: &Http, url: &str, offset: usize, len: usize, want: &[u8]) -> Result<(), String> {
    fetch_range(http, url, offset, len, want).await.map(drop)
}

/// Waits until kube-proxy has written the rules that send `cluster_ip` to ready endpoints. Until then a new
/// ClusterIP is not local to anything: a connection to it is refused, or even leaves the machine by the default
/// route (a 404 from whatever answers out there was seen), so no request is sent before.
fn wait_programmed(cluster_ip: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("iptables-save").args(["-t", "nat"]).output().unwrap();
        let rules = String::from_utf8_lossy(&out.stdout);
        if rules.lines().any(|l| l.contains(&format!("-d {cluster_ip}/32")) && l.contains("-j KUBE-SVC-")) {
            return;
        }
        assert!(Instant::now() < deadline, "kube-proxy did not program {cluster_ip} within 60s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn create_s3_credentials(client: &Client, ns: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let creds = Secret {
        metadata: ObjectMeta { name: Some("s3".into()), ..Default::default() },
        data: Some(BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".into(), ByteString(S3Server::ACCESS_KEY.into())),
            ("AWS_SECRET_ACCESS_KEY".into(), ByteString(S3Server::SECRET_KEY.into())),
        ])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &creds).await.unwrap();
}

fn s3_storage(s3: &S3Server) -> String {
    format!(
        "storage: {{url: 's3://media', endpoint: '{}', region: us-east-1, pathStyle: true, credentialsSecretRef: {{name: s3}}}}",
        s3.endpoint
    )
}

/// Waits until the agents of `name` are all Ready through their own probes and the VideoDelivery says Ready.
async fn agents_ready(client: &Client, ns: &str, name: &str, replicas: usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    settle(&format!("{replicas} ready agents of {name}"), timing::POD_READY, || async {
        let d = deployments.get(&format!("{name}-agent")).await.ok()?;
        let s = d.status?;
        let settled = s.replicas? as usize == replicas && s.updated_replicas? as usize == replicas;
        (settled && ready_pods(&pods, &selector(name)).await.len() == replicas).then_some(())
    })
    .await;
    common::wait_ready(client, ns, name, "True", Some("Ready")).await;
}

/// The address of the agents' Service: (ClusterIP:port, node address:NodePort when it has one), once kube-proxy
/// routes it.
async fn service_addresses(client: &Client, ns: &str, name: &str) -> (String, Option<String>) {
    let svc = Api::<Service>::namespaced(client.clone(), ns).get(&format!("{name}-agent")).await.unwrap();
    let spec = svc.spec.unwrap();
    let port = &spec.ports.unwrap()[0];
    let ip = spec.cluster_ip.unwrap();
    wait_programmed(&ip);
    let cluster = format!("http://{ip}:{}", port.port);
    let node_port = port.node_port.map(|p| format!("http://{}:{p}", vd_testsupport::NODE_IP));
    (cluster, node_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chart_runs_on_a_real_node() {
    let started = Instant::now();
    let node = node();
    let cp = node.control_plane();
    let client = cp.client().await.unwrap();
    let step = |what: &str| eprintln!("[+{:>5.1}s] {what}", started.elapsed().as_secs_f64());

    // 1. helm install, as the README says, with the chart's default images (imported, never pulled).
    step("helm install");
    // The control plane installed the CRD from crds/ at start; the release takes it over, as an upgrade from a
    // kubectl-applied CRD would.
    helm(
        node,
        &[
            "install",
            "videodelivery",
            CHART,
            "--namespace",
            "videodelivery",
            "--create-namespace",
            "--take-ownership",
            "--set",
            timing::FLOORS,
            // Sidecar mode: the webhook, reached by the API server through the chart's Service.
            "--set",
            "sidecar.enabled=true",
        ],
    );
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), "videodelivery");
    // The operator pods are what the chart's Deployment selects.
    let operator = Api::<Deployment>::namespaced(client.clone(), "videodelivery").get("videodelivery").await.unwrap();
    let labels = operator.spec.unwrap().selector.match_labels.unwrap();
    let operator_selector: String = labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let operator_selector = operator_selector.as_str();
    settle("two operator pods Ready", timing::POD_READY, || async {
        (ready_pods(&system_pods, operator_selector).await.len() == 2).then_some(())
    })
    .await;
    let operator_pods: Vec<String> =
        ready_pods(&system_pods, operator_selector).await.iter().map(|p| p.name_any()).collect();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "videodelivery");
    let holder = eventually("a leader", Duration::from_secs(60), || async {
        leases.get_opt("videodelivery").await.ok()??.spec?.holder_identity
    })
    .await;
    assert!(operator_pods.contains(&holder), "the leader {holder} is one of the operator pods {operator_pods:?}");
    let pids = container_pids(node, "videodelivery", "operator");
    assert_eq!(pids.len(), 2, "two operator containers run");
    for pid in pids {
        let (uid, read_only) = process_identity(pid);
        assert_eq!(uid.split_whitespace().nth(1), Some("65532"), "the operator runs as nonroot: {uid}");
        assert!(read_only, "the operator's root filesystem is read-only");
    }

    // The rotation and HTTPS scenarios run beside the others, each in its own namespace, from the start.
    let rotation = tokio::spawn(rotation_under_traffic(node, started));
    let https = tokio::spawn(viewers_over_https(node, started));
    let sidecar = tokio::spawn(sidecar_in_an_app_pod(node, started));

    // 2. An S3 VideoDelivery: agents become Ready through their own probes; exact bytes through the Service.
    step("S3 VideoDelivery");
    let s3 = S3Server::start_on(vd_testsupport::NODE_IP).unwrap();
    let video = film(4 * 1024 * 1024, 1);
    s3.put("media", "films/a.mp4", &video).unwrap();
    let ns = node.namespace("apps").await.unwrap();
    create_s3_credentials(&client, &ns).await;
    common::create(
        &client,
        &ns,
        "media",
        &format!(
            "{}\nagents: {{replicas: 2, rateLimit: {{requestsPerSecond: 0}}}}\nservice: {{type: NodePort}}",
            s3_storage(&s3)
        ),
    )
    .await;
    // The backend starts beside the agents, with the keyring Secret mounted.
    deploy_backend(&client, &ns, "media", timing::TOKEN_LIFETIME).await;
    agents_ready(&client, &ns, "media", 2).await;
    let backend = running_backend(&client, &ns, "media").await;
    for (what, container, want) in [("agent", "agent", 2), ("backend", "backend", 1)] {
        let pids = container_pids(node, &ns, container);
        assert_eq!(pids.len(), want, "{what} containers");
        for pid in pids {
            let (uid, read_only) = process_identity(pid);
            assert_eq!(uid.split_whitespace().nth(1), Some("65532"), "the {what} runs as nonroot: {uid}");
            assert!(read_only, "the {what}'s root filesystem is read-only");
        }
    }
    let (cluster_url, node_port_url) = service_addresses(&client, &ns, "media").await;
    let node_port_url = node_port_url.expect("a NodePort Service");
    let [fresh, pooled] = clients();
    // The browser asks the backend for a URL, then fetches from the agents with it.
    for (i, base) in [&cluster_url, &node_port_url].into_iter().enumerate() {
        let url = backend.url(base, "/videos/films/a.mp4").await;
        let offset = 1_000_000 + i * 777_777;
        first_fetch(&fresh, &url, offset, 256 * 1024, &video)
            .await
            .unwrap_or_else(|e| panic!("{base}: {e}\n{}", agent_logs(node, &ns, "media")));
        fetch_range(&pooled, &url, 0, 1, &video).await.unwrap_or_else(|e| panic!("{base}: {e}"));
        // Unsigned: refused.
        let unsigned = format!("{base}/videos/films/a.mp4");
        let err = fetch_range(&fresh, &unsigned, 0, 1, &video).await.unwrap_err();
        assert!(err.starts_with("403") || err.starts_with("401"), "{err}");
    }

    // 3. A file:// VideoDelivery on a local (hostPath) PersistentVolume.
    step("file:// VideoDelivery on a local volume");
    let media = tempfile::Builder::new().prefix("vd-media-").tempdir().unwrap();
    let archive_video = film(1024 * 1024, 2);
    std::fs::create_dir_all(media.path().join("films")).unwrap();
    std::fs::write(media.path().join("films/b.mp4"), &archive_video).unwrap();
    for p in [media.path(), &media.path().join("films")] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    local_volume(&client, &ns, "video-archive", media.path()).await;
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/local-volume.yaml"))
        .unwrap()
        .replace("replicas: 3", "replicas: 1");
    kubectl(node, &ns, &["apply", "-f", "-"], &example);
    deploy_backend(&client, &ns, "archive", 600).await;
    agents_ready(&client, &ns, "archive", 1).await;
    let (archive_url, _) = service_addresses(&client, &ns, "archive").await;
    let url = running_backend(&client, &ns, "archive").await.url(&archive_url, "/videos/films/b.mp4").await;
    first_fetch(&fresh, &url, 12_345, 100_000, &archive_video).await.unwrap_or_else(|e| panic!("file://: {e}"));

    // 3b. Chromium plays HLS from agents on the same volume, through the NodePort, cross-origin from a web page,
    // with a token on the playlist only (the agents rewrite the segment and init URIs).
    step("Chromium plays HLS through the NodePort");
    make_hls(&media.path().join("film"));
    let page_port = common::free_port();
    common::create(
        &client,
        &ns,
        "player",
        &format!(
            "storage: {{url: 'file:///media', volumeClaimName: video-archive}}\n\
             agents: {{replicas: 1, corsOrigins: ['http://127.0.0.1:{page_port}'], playback: {{rewriteManifests: true}}}}\n\
             service: {{type: NodePort}}"
        ),
    )
    .await;
    deploy_backend(&client, &ns, "player", 600).await;
    agents_ready(&client, &ns, "player", 1).await;
    let (player_cluster_url, player_node_port) = service_addresses(&client, &ns, "player").await;
    let player_backend = running_backend(&client, &ns, "player").await;
    let probe = player_backend.url(&player_cluster_url, "/videos/films/b.mp4").await;
    first_fetch(&fresh, &probe, 0, 1000, &archive_video).await.unwrap_or_else(|e| panic!("player: {e}"));
    let (_, master) = player_backend
        .sign_with(&player_node_port.expect("a NodePort"), "/videos/film/index.m3u8", "token")
        .await
        .unwrap_or_else(|e| panic!("player: {e}"));
    let report = play_in_chromium(
        page_port,
        serde_json::json!([{ "name": "hls.js via NodePort", "kind": "hls", "url": master }]),
    );
    let r = &report[0];
    assert!(r["errors"].as_array().unwrap().is_empty(), "Chromium: {r}\n{}", agent_logs(node, &ns, "player"));
    assert_eq!(r["ended"], true, "played to the end: {r}");
    let duration = r["duration"].as_f64().unwrap();
    assert!((3.5..4.6).contains(&duration), "the whole film: {r}");

    // 4. A configuration change rolls the agents while two clients send a signed range request every 100 ms.
    step("rolling update under traffic");
    let traffic = Traffic::start(backend.clone(), vec![cluster_url.clone(), node_port_url.clone()], video.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let vds: Api<videodelivery_operator::crd::VideoDelivery> = Api::namespaced(client.clone(), &ns);
    let change = serde_json::json!({"spec": {"agents": {"cacheControl": "public, max-age=7"}}});
    vds.patch("media", &PatchParams::default(), &Patch::Merge(&change)).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let before: BTreeSet<String> = ready_pods(&pods, &selector("media")).await.iter().map(|p| p.name_any()).collect();
    settle("the rollout replaced both agents and the old ones are gone", timing::POD_READY, || async {
        let d = deployments.get("media-agent").await.ok()?;
        let s = d.status?;
        let all = pods.list(&ListParams::default().labels(&selector("media"))).await.ok()?.items;
        let names: BTreeSet<String> = all.iter().map(|p| p.name_any()).collect();
        (d.metadata.generation == s.observed_generation
            && s.updated_replicas == Some(2)
            && s.ready_replicas == Some(2)
            && all.len() == 2
            && names.is_disjoint(&before))
        .then_some(())
    })
    .await;
    // The old pods are gone only after their whole shutdown; keep sending a little longer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = traffic.stop().await;
    step(&format!("rolling update: {report:?}"));
    assert!(report.failures.is_empty(), "requests failed during the rollout: {:#?}", report.failures);
    assert!(report.ok > 100, "{report:?}");
    report.assert_backend_kept_up();
    assert!(
        report.cache_control.contains("public, max-age=7") && report.cache_control.len() >= 2,
        "answers came from the old agents and then the new ones: {:?}",
        report.cache_control
    );

    // 5. An eviction respects the PDB: one agent may go, not two at once.
    step("eviction and the PDB");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    eventually("the PDB allows one disruption", Duration::from_secs(60), || async {
        (pdbs.get("media-agent").await.ok()?.status?.disruptions_allowed == 1).then_some(())
    })
    .await;
    let agents: Vec<String> = ready_pods(&pods, &selector("media")).await.iter().map(|p| p.name_any()).collect();
    assert_eq!(agents.len(), 2);
    // A drain, as `kubectl drain` does it: evict every agent, retrying what the budget refuses, while the
    // clients keep sending. The budget lets one agent go at a time, so the Service never runs dry.
    let traffic = Traffic::start(backend, vec![cluster_url.clone()], video.clone());
    let mut refusals = Vec::new();
    let drain_started = Instant::now();
    for agent in &agents {
        loop {
            let ready: Vec<String> = ready_pods(&pods, &selector("media")).await.iter().map(|p| p.name_any()).collect();
            match evict(node, &ns, agent) {
                Ok(_) => break,
                Err(e) if e.contains("TooManyRequests") => refusals.push(format!(
                    "+{:.1}s {agent} refused while ready: {ready:?}",
                    drain_started.elapsed().as_secs_f64()
                )),
                Err(e) => panic!("evict {agent}: {e}"),
            }
            assert!(drain_started.elapsed() < timing::POD_READY, "the drain did not finish: {refusals:?}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    agents_ready(&client, &ns, "media", 2).await;
    let report = traffic.stop().await;
    step(&format!("drain: {} refusals {refusals:?}; traffic {report:?}", refusals.len()));
    assert!(report.failures.is_empty(), "requests failed during the drain: {:#?}", report.failures);
    assert!(!refusals.is_empty(), "the budget held the second eviction until a replacement was ready");

    // 6. Rotation under traffic (started after step 1) must have finished with zero rejections.
    step("waiting for the rotation scenario");
    rotation.await.unwrap();
    step("waiting for the HTTPS scenario");
    https.await.unwrap();
    step("waiting for the sidecar scenario");
    sidecar.await.unwrap();

    // 7. helm upgrade rolls the operator (one leader again); helm uninstall leaves nothing of the release.
    step("helm upgrade");
    helm(
        node,
        &[
            "upgrade",
            "videodelivery",
            CHART,
            "--namespace",
            "videodelivery",
            "--reuse-values",
            "--set",
            "logFormat=text",
        ],
    );
    settle("the upgraded operator pods Ready", timing::POD_READY, || async {
        let ready = ready_pods(&system_pods, operator_selector).await;
        let all = system_pods.list(&ListParams::default().labels(operator_selector)).await.ok()?.items;
        let upgraded = ready.iter().filter(|p| !operator_pods.contains(&p.name_any())).count();
        (upgraded == 2 && all.len() == 2).then_some(())
    })
    .await;
    let new_pods: Vec<String> =
        ready_pods(&system_pods, operator_selector).await.iter().map(|p| p.name_any()).collect();
    eventually("a new leader", Duration::from_secs(60), || async {
        let h = leases.get_opt("videodelivery").await.ok()??.spec?.holder_identity?;
        new_pods.contains(&h).then_some(())
    })
    .await;
    step("helm uninstall");
    helm(node, &["uninstall", "videodelivery", "--namespace", "videodelivery", "--wait", "--timeout", "120s"]);
    settle("no operator pod left", timing::POD_READY, || async {
        system_pods.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    let instance = ListParams::default().labels("app.kubernetes.io/instance=videodelivery");
    assert!(Api::<ClusterRole>::all(client.clone()).list(&instance).await.unwrap().items.is_empty());
    assert!(Api::<ClusterRoleBinding>::all(client.clone()).list(&instance).await.unwrap().items.is_empty());
    let configs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    assert!(configs.list(&instance).await.unwrap().items.is_empty(), "the webhook configuration is gone");
    // The webhook's Secret (its CA key) is the operator's, owned by the configuration: the garbage collector
    // deletes it a moment after the configuration.
    let leftovers = || {
        let left = kubectl(
            node,
            "videodelivery",
            &["get", "all,sa,role,rolebinding,configmap,secret,lease", "-o", "name"],
            "",
        );
        left.lines()
            .filter(|l| !l.ends_with("/kube-root-ca.crt") && !l.ends_with("serviceaccount/default"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !leftovers().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let left = leftovers();
    assert!(left.is_empty(), "the release left {left:?}");
    step("done");
}

/// A PersistentVolume on a host directory and a claim bound to it: the node's "local" storage.
async fn local_volume(client: &Client, ns: &str, claim: &str, path: &Path) {
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{ns}-{claim}")},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": path.to_str().unwrap(), "type": "Directory"},
            "claimRef": {"namespace": ns, "name": claim},
        }
    }))
    .unwrap();
    Api::<PersistentVolume>::all(client.clone()).create(&PostParams::default(), &pv).await.unwrap();
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": claim},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "volumeName": format!("{ns}-{claim}"),
            "resources": {"requests": {"storage": "1Gi"}},
        }
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns).create(&PostParams::default(), &pvc).await.unwrap();
}

/// [`eventually`] for what the node must bring up: on timeout the failure carries [`cluster_report`].
async fn settle<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    match tokio::time::timeout(limit, poll).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not happen within {limit:?}\n{}", cluster_report(node())),
    }
}

/// What a person looks at first when pods do not come up: every pod with its phase and readiness, the latest events,
/// the logs of each pod that is not Ready (its previous run too), and the node components' log tails.
fn cluster_report(node: &Node) -> String {
    let run =
        |args: &[&str]| kubectl_result(node, "default", args, "").unwrap_or_else(|e| format!("(kubectl failed: {e})"));
    let mut out = format!("--- pods\n{}", run(&["get", "pods", "-A", "-o", "wide"]));
    let events = run(&["get", "events", "-A", "--sort-by=.lastTimestamp"]);
    let events: Vec<&str> = events.lines().collect();
    out.push_str(&format!("--- events (last 40)\n{}\n", events[events.len().saturating_sub(40)..].join("\n")));
    for line in run(&["get", "pods", "-A", "--no-headers"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [ns, pod, ready, ..] = f[..] else { continue };
        if ready.split_once('/').is_some_and(|(r, all)| r == all) {
            continue;
        }
        for previous in ["--previous=false", "--previous=true"] {
            let logs = run(&["logs", "-n", ns, pod, "--all-containers", "--tail=30", previous]);
            out.push_str(&format!("--- logs {ns}/{pod} {previous}\n{logs}\n"));
        }
    }
    out.push_str(&node.log_tails());
    out
}

/// The last lines of the agents' logs, to explain a failure.
fn agent_logs(node: &Node, ns: &str, name: &str) -> String {
    let selector = selector(name);
    kubectl(node, ns, &["logs", "-l", &selector, "--prefix", "--tail=20", "--ignore-errors"], "")
}

fn kubectl(node: &Node, ns: &str, args: &[&str], stdin: &str) -> String {
    kubectl_result(node, ns, args, stdin).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

/// An eviction through the Eviction API, as `kubectl drain` asks for it (a process per request). Two evictions
/// fired milliseconds apart (two `Api::evict` calls in a row) were both accepted against a budget that allowed one,
/// even with plain pause pods: the API server apparently read a moment-old budget. A drain's pace never hits that.
fn evict(node: &Node, ns: &str, pod: &str) -> Result<String, String> {
    let body =
        serde_json::json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}});
    let path = format!("/api/v1/namespaces/{ns}/pods/{pod}/eviction");
    kubectl_result(node, ns, &["create", "--raw", &path, "-f", "-"], &body.to_string())
}

fn kubectl_result(node: &Node, ns: &str, args: &[&str], stdin: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(vd_testsupport::binary("kubectl").unwrap())
        .arg(format!("--kubeconfig={}", node.control_plane().kubeconfig().display()))
        .arg(format!("--namespace={ns}"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[derive(Debug, Default)]
struct TrafficReport {
    ok: u32,
    failures: Vec<String>,
    cache_control: BTreeSet<String>,
    /// Each key id the backend signed with, and when (seconds after the traffic started) it first did.
    kids: BTreeMap<String, f64>,
    /// Questions to the backend asked again after 5 s without an answer (see [`Backend::sign_counting_retries`]).
    backend_retries: u32,
}

impl TrafficReport {
    /// A retried question to the backend now and then is load on two cores; more than one in a hundred is a
    /// backend that does not keep up, and fails the test.
    fn assert_backend_kept_up(&self) {
        assert!(self.backend_retries <= 1 + self.ok / 100, "the backend kept missing questions: {self:?}");
    }
}

/// Clients asking the backend for a URL and sending a range request with it every [`timing::REQUEST_EVERY`] to
/// each base URL, alternating a new connection and a kept-alive one, until stopped. A question the backend does not
/// answer with a URL is a failure too.
struct Traffic {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<TrafficReport>,
}

impl Traffic {
    fn start(backend: Backend, bases: Vec<String>, video: Vec<u8>) -> Traffic {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let [fresh, pooled] = clients();
            let started = Instant::now();
            let mut report = TrafficReport::default();
            let mut i = 0usize;
            let mut tick = tokio::time::interval(timing::REQUEST_EVERY);
            while !*stopped.borrow_and_update() {
                tick.tick().await;
                i += 1;
                let base = &bases[i % bases.len()];
                let http = if (i / bases.len()).is_multiple_of(2) { &fresh } else { &pooled };
                let (kid, url) = match backend.sign_counting_retries(base, "/videos/films/a.mp4", "query").await {
                    Ok((signed, retries)) => {
                        report.backend_retries += retries;
                        signed
                    }
                    Err(e) => {
                        report.failures.push(format!("+{:.1}s {e}", started.elapsed().as_secs_f64()));
                        continue;
                    }
                };
                report.kids.entry(kid.clone()).or_insert(started.elapsed().as_secs_f64());
                let offset = (i * 7919) % (video.len() - 65_536);
                match fetch_range(http, &url, offset, 65_536, &video).await {
                    Ok(headers) => {
                        report.ok += 1;
                        if let Some(cc) = headers.get("cache-control").and_then(|v| v.to_str().ok()) {
                            report.cache_control.insert(cc.to_string());
                        }
                    }
                    Err(e) => report.failures.push(format!(
                        "+{:.1}s {base} ({}) signed with {kid}: {e}",
                        started.elapsed().as_secs_f64(),
                        if (i / bases.len()).is_multiple_of(2) { "new connection" } else { "kept alive" }
                    )),
                }
            }
            report
        });
        Traffic { stop, task }
    }

    async fn stop(self) -> TrafficReport {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// A key rotation with the real kubelet carrying each keyring change to the agents' volume and to the backend's,
/// while the backend signs with whatever key its mounted keyring calls active and a client asks it for a URL and
/// fetches through the Service every [`timing::REQUEST_EVERY`]: not one request refused, and neither the agents nor
/// the backend were restarted to get the new key.
async fn rotation_under_traffic(node: &'static Node, started: Instant) {
    let cp = node.control_plane();
    let client = cp.client().await.unwrap();
    let s3 = S3Server::start_on(vd_testsupport::NODE_IP).unwrap();
    let video = film(2 * 1024 * 1024, 3);
    s3.put("media", "films/a.mp4", &video).unwrap();
    let ns = node.namespace("rotate").await.unwrap();
    create_s3_credentials(&client, &ns).await;
    common::create(
        &client,
        &ns,
        "keys",
        &format!(
            "{}\nsigning: {}\nagents: {{replicas: 1, rateLimit: {{requestsPerSecond: 0}}}}",
            s3_storage(&s3),
            timing::SIGNING
        ),
    )
    .await;
    deploy_backend(&client, &ns, "keys", timing::TOKEN_LIFETIME).await;
    agents_ready(&client, &ns, "keys", 1).await;
    let (first, _) = common::keyring(&client, &ns, "keys").await.unwrap();
    let first_kid = first.keys().iter().map(|k| k.kid().to_string()).next().unwrap();
    let (cluster_url, _) = service_addresses(&client, &ns, "keys").await;
    let backend = running_backend(&client, &ns, "keys").await;
    let [fresh, _] = clients();
    let url = backend.url(&cluster_url, "/videos/films/a.mp4").await;
    first_fetch(&fresh, &url, 0, 1024, &video).await.unwrap_or_else(|e| panic!("rotation: {e}"));
    let traffic = Traffic::start(backend, vec![cluster_url], video);
    // Until the first key has been promoted away from and then removed from the keyring.
    eventually("a full rotation (the first key removed)", Duration::from_secs(150), || async {
        let (ring, _) = common::keyring(&client, &ns, "keys").await?;
        (!ring.keys().iter().any(|k| k.kid() == first_kid)).then_some(())
    })
    .await;
    // Tokens signed with the first key just before it retired stay valid a little longer: keep going.
    tokio::time::sleep(Duration::from_secs(timing::TOKEN_LIFETIME)).await;
    let report = traffic.stop().await;
    eprintln!("[+{:>5.1}s] rotation: {report:?}", started.elapsed().as_secs_f64());
    assert!(report.failures.is_empty(), "requests refused during the rotation: {:#?}", report.failures);
    assert!(report.kids.len() >= 2, "signed with a new key after the promotion: {:?}", report.kids);
    assert!(report.ok > 300, "{report:?}");
    report.assert_backend_kept_up();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let backends = "app.kubernetes.io/name=example-backend,app.kubernetes.io/instance=keys";
    for p in ready_pods(&pods, &selector("keys")).await.into_iter().chain(ready_pods(&pods, backends).await) {
        let name = p.name_any();
        let restarts = p.status.unwrap().container_statuses.unwrap()[0].restart_count;
        assert_eq!(restarts, 0, "{name} got the key from its volume, without a restart");
    }
    // The namespace goes; its agents are stopped by the kubelet.
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client).delete(&ns, &DeleteParams::default()).await;
}

/// The bytes the app of [`sidecar_in_an_app_pod`] writes: `((i * 7) ^ (i >> 9) ^ (i >> 17)) & 255` for byte i,
/// the same formula as in its JavaScript.
fn app_film(len: usize) -> Vec<u8> {
    (0..len).map(|i| (((i * 7) ^ (i >> 9) ^ (i >> 17)) & 255) as u8).collect()
}

/// The app of the sidecar scenario (run by `node -e` in the example backend's image), as a web app that stores
/// uploads on its own disk: writes a film into the emptyDir at /media (under a temporary name, then renamed, so it
/// is never seen half written), copies the HLS files of its ConfigMap (mounted at /site, when there is one) to
/// /media/film, then answers on port 3000: the page and script files of /site, and "app" for anything else (its
/// readiness probe).
const APP_SCRIPT: &str = r#"
const fs = require("fs"), http = require("http");
const n = 2 * 1024 * 1024, b = Buffer.alloc(n);
for (let i = 0; i < n; i++) b[i] = ((i * 7) ^ (i >>> 9) ^ (i >>> 17)) & 255;
fs.mkdirSync("/media/films", { recursive: true });
fs.writeFileSync("/media/films/.a.mp4.part", b);
fs.renameSync("/media/films/.a.mp4.part", "/media/films/a.mp4");
const site = "/site", types = { html: "text/html; charset=utf-8", js: "text/javascript" };
if (fs.existsSync(site)) {
  fs.mkdirSync("/media/film", { recursive: true });
  for (const f of fs.readdirSync(site)) if (/^[\w-]+\.(m3u8|m4s|mp4)$/.test(f)) fs.copyFileSync(`${site}/${f}`, `/media/film/${f}`);
}
http.createServer((req, res) => {
  const m = /^\/(\w[\w.-]*\.(html|js))$/.exec(req.url.split("?")[0]);
  if (m && fs.existsSync(`${site}/${m[1]}`)) {
    res.writeHead(200, { "content-type": types[m[2]] });
    return res.end(fs.readFileSync(`${site}/${m[1]}`));
  }
  res.end("app");
}).listen(3000);
"#;

/// The pod template of an app `name` that opts in to the sidecar of the VideoDelivery `delivery`, serving its
/// emptyDir `uploads` (see [`APP_SCRIPT`]), with the ConfigMap `site` mounted at /site when `site` is set.
fn app_template(name: &str, delivery: &str, site: bool) -> serde_json::Value {
    use videodelivery_operator::inject;
    let labels = serde_json::json!({"app.kubernetes.io/name": name, inject::INJECT_LABEL: "true"});
    let mut mounts = vec![serde_json::json!({"name": "uploads", "mountPath": "/media"})];
    let mut volumes = vec![serde_json::json!({"name": "uploads", "emptyDir": {}})];
    if site {
        mounts.push(serde_json::json!({"name": "site", "mountPath": "/site", "readOnly": true}));
        volumes.push(serde_json::json!({"name": "site", "configMap": {"name": "site"}}));
    }
    serde_json::json!({
        "metadata": {
            "labels": labels,
            "annotations": {inject::DELIVERY_ANNOTATION: delivery, inject::MEDIA_VOLUME_ANNOTATION: "uploads"},
        },
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532},
            "containers": [{
                "name": "app",
                "image": BACKEND_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/nodejs/bin/node", "-e", APP_SCRIPT],
                "ports": [{"name": "app", "containerPort": 3000}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "app"}, "periodSeconds": 1},
                "securityContext": {
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        },
    })
}

/// The Deployment of [`app_template`] and its Service `name`: port 80 to the app, 8080 to the sidecar's video port
/// (the default).
async fn deploy_app(client: &Client, ns: &str, name: &str, delivery: &str, site: bool) {
    let template = app_template(name, delivery, site);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": template,
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns).create(&PostParams::default(), &deployment).await.unwrap();
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [
                {"name": "app", "port": 80, "targetPort": 3000},
                {"name": "videos", "port": 8080, "targetPort": 8080},
            ],
        },
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns).create(&PostParams::default(), &service).await.unwrap();
}

/// Sidecar mode on the node, with the chart's webhook reached the way a cluster reaches it: the API server calls
/// the operator pods through the chart's Service. An app Deployment that opts in and names its emptyDir with
/// `videodelivery.dev/media-volume` gets the native sidecar, which runs non-root on a read-only root, serves the
/// file the app wrote as exact signed ranges through the pod's Service, keeps serving with zero rejections through a
/// key rotation (the keyring reaches it through kubelet's volume update, without a restart), and is counted in
/// `status.sidecars`.
async fn sidecar_in_an_app_pod(node: &'static Node, started: Instant) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use videodelivery_operator::crd::{SidecarStatus, VideoDelivery};
    use videodelivery_operator::inject;
    let step = |what: &str| eprintln!("[+{:>5.1}s] sidecar: {what}", started.elapsed().as_secs_f64());
    let cp = node.control_plane();
    let client = cp.client().await.unwrap();
    let ns = node.namespace("sidecar").await.unwrap();
    // The fleet is not used (replicas 0): the sidecar serves the app's volume instead of this storage.
    common::create(
        &client,
        &ns,
        "app",
        &format!(
            "storage: {{url: 'file:///media', volumeClaimName: unused}}\nsigning: {}\nagents: {{replicas: 0, rateLimit: {{requestsPerSecond: 0}}}}",
            timing::SIGNING
        ),
    )
    .await;
    deploy_backend(&client, &ns, "app", timing::TOKEN_LIFETIME).await;

    // The operator wrote the CA bundle into the chart's configuration, and kube-proxy routes the webhook's Service.
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    eventually("the CA bundle in the chart's webhook configuration", Duration::from_secs(60), || async {
        let config = configs.get("videodelivery-sidecar-injector").await.ok()?;
        config.webhooks?.first()?.client_config.ca_bundle.as_ref().filter(|b| !b.0.is_empty()).map(drop)
    })
    .await;
    let webhook =
        Api::<Service>::namespaced(client.clone(), "videodelivery").get("videodelivery-webhook").await.unwrap();
    wait_programmed(webhook.spec.unwrap().cluster_ip.as_deref().unwrap());

    // The API server reaches the webhook through the Service: a dry run comes back with the sidecar (the first
    // calls may fail while the operator's listener or kube-proxy's rules are not in place yet).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut probe: Pod = serde_json::from_value(app_template("uploads", "app", false)).unwrap();
    probe.metadata.name = Some("dry-run".into());
    eventually("a dry-run pod injected through the webhook's Service", Duration::from_secs(60), || async {
        let pod = pods.create(&PostParams { dry_run: true, ..Default::default() }, &probe).await.ok()?;
        inject::sidecar(&pod).map(drop)
    })
    .await;
    step("the webhook answers through its Service");

    deploy_app(&client, &ns, "uploads", "app", false).await;
    // Ready: the app's probe and the sidecar's own (native sidecars count towards the pod's readiness).
    let pod = settle("the app pod with its sidecar Ready", timing::POD_READY, || async {
        ready_pods(&pods, "app.kubernetes.io/name=uploads").await.into_iter().next()
    })
    .await;
    let sidecar = inject::sidecar(&pod).expect("the webhook added the sidecar");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"), "a native sidecar (restartable init container)");
    let pids = container_pids(node, &ns, inject::SIDECAR_NAME);
    assert_eq!(pids.len(), 1, "the sidecar runs");
    let (uid, read_only) = process_identity(pids[0]);
    assert_eq!(uid.split_whitespace().nth(1), Some("65532"), "the sidecar runs as nonroot: {uid}");
    assert!(read_only, "the sidecar's root filesystem is read-only");
    step("the injected sidecar runs (uid 65532, read-only root)");

    let service = Api::<Service>::namespaced(client.clone(), &ns).get("uploads").await.unwrap();
    let ip = service.spec.unwrap().cluster_ip.unwrap();
    wait_programmed(&ip);
    let base = format!("http://{ip}:8080");
    let video = app_film(2 * 1024 * 1024);
    let backend = running_backend(&client, &ns, "app").await;
    let [fresh, pooled] = clients();
    let url = backend.url(&base, "/videos/films/a.mp4").await;
    let logs = || kubectl(node, &ns, &["logs", "deployment/uploads", "--all-containers", "--tail=20"], "");
    first_fetch(&fresh, &url, 1_234_567, 300_000, &video).await.unwrap_or_else(|e| panic!("sidecar: {e}\n{}", logs()));
    fetch_range(&pooled, &url, 0, 1, &video).await.unwrap_or_else(|e| panic!("sidecar: {e}"));
    let err = fetch_range(&fresh, &format!("{base}/videos/films/a.mp4"), 0, 1, &video).await.unwrap_err();
    assert!(err.starts_with("403") || err.starts_with("401"), "unsigned through the sidecar: {err}");
    step("exact signed ranges from the app's emptyDir through the pod's Service");

    // A key rotation while the backend signs every 100 ms: not one request refused by the sidecar.
    let (first, _) = common::keyring(&client, &ns, "app").await.unwrap();
    let first_kid = first.keys().iter().map(|k| k.kid().to_string()).next().unwrap();
    let traffic = Traffic::start(backend, vec![base], video);
    // While the keys rotate: the same-origin case, with its own VideoDelivery and app.
    same_origin_session_in_chromium(node, &client, &ns, started).await;
    eventually(
        "a full rotation in the sidecar's keyring (the first key removed)",
        Duration::from_secs(150),
        || async {
            let (ring, _) = common::keyring(&client, &ns, "app").await?;
            (!ring.keys().iter().any(|k| k.kid() == first_kid)).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(timing::TOKEN_LIFETIME)).await;
    let report = traffic.stop().await;
    step(&format!("rotation: {report:?}"));
    assert!(report.failures.is_empty(), "requests refused by the sidecar during the rotation: {:#?}", report.failures);
    assert!(report.kids.len() >= 2, "signed with a new key after the promotion: {:?}", report.kids);
    assert!(report.ok > 300, "{report:?}");
    report.assert_backend_kept_up();
    let pod = pods.get(&pod.name_any()).await.unwrap();
    let status = pod.status.unwrap();
    let restarts: Vec<(String, i32)> = status
        .init_container_statuses
        .into_iter()
        .flatten()
        .chain(status.container_statuses.into_iter().flatten())
        .map(|c| (c.name, c.restart_count))
        .collect();
    assert!(
        restarts.iter().all(|(_, n)| *n == 0),
        "the sidecar got the keys from its volume, no restart: {restarts:?}"
    );

    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    eventually("status.sidecars counts the pod", Duration::from_secs(60), || async {
        let sidecars = vds.get("app").await.ok()?.status?.sidecars?;
        (sidecars == SidecarStatus { pods: 1, outdated: 0 }).then_some(())
    })
    .await;
    step("status.sidecars: 1 pod, 0 outdated");
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client).delete(&ns, &DeleteParams::default()).await;
}

/// Same origin with the sidecar: an app pod (opted in to the VideoDelivery `web`, whose session cookie is
/// `SameSite=Strict`) serves the player page and the HLS files it copies to its emptyDir; an Ingress on one host
/// sends `/` to the app's port and `/videos` to the sidecar's (Traefik, the Ingress controller); Chromium opens
/// the page there, trades the backend's prefix token for the session cookie at `/videos/session`, and plays with
/// no token in any URL. The same page without the session is refused.
async fn same_origin_session_in_chromium(node: &'static Node, client: &Client, ns: &str, started: Instant) {
    let step = |what: &str| eprintln!("[+{:>5.1}s] sidecar: {what}", started.elapsed().as_secs_f64());
    common::create(
        client,
        ns,
        "web",
        "storage: {url: 'file:///media', volumeClaimName: unused}\n\
         agents: {replicas: 0, playback: {session: {sameSite: Strict, secureCookie: false}}}",
    )
    .await;
    deploy_backend(client, ns, "web", 600).await;
    // What the app serves: the test page (HLS only), hls.js, and the HLS files it puts on its volume.
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    let page = std::fs::read_to_string(browser.join("player.html")).unwrap();
    let page = page.replace("<script src=\"/dash.all.min.js\"></script>\n", "");
    let hls_js = std::fs::read_to_string(browser.join("node_modules/hls.js/dist/hls.min.js"))
        .expect("run scripts/setup.sh (npm ci in tests/browser)");
    let hls = tempfile::tempdir().unwrap();
    make_hls(hls.path());
    let files: BTreeMap<String, ByteString> = std::fs::read_dir(hls.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), ByteString(std::fs::read(&p).unwrap())))
        .collect();
    let site = k8s_openapi::api::core::v1::ConfigMap {
        metadata: ObjectMeta { name: Some("site".into()), ..Default::default() },
        data: Some(BTreeMap::from([("player.html".into(), page), ("hls.min.js".into(), hls_js)])),
        binary_data: Some(files),
        ..Default::default()
    };
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &site)
        .await
        .unwrap();
    deploy_app(client, ns, "web", "web", true).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    settle("the web app pod with its sidecar Ready", timing::POD_READY, || async {
        ready_pods(&pods, "app.kubernetes.io/name=web").await.into_iter().next()
    })
    .await;

    // One host for the app and its videos: Traefik serves this namespace's Ingresses of its own class only.
    let class = format!("{ns}-web");
    kubectl(
        node,
        ns,
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: {class}}}\n\
             spec: {{controller: {}}}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: web}}\n\
             spec:\n  ingressClassName: {class}\n  rules:\n  - http:\n      paths:\n\
             \x20     - {{path: /videos, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 8080}}}}}}}}\n\
             \x20     - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n",
            vd_testsupport::Traefik::INGRESS_CONTROLLER
        ),
    );
    let cp = node.control_plane();
    let traefik =
        vd_testsupport::Traefik::start_http_ingress(cp.kubeconfig(), ns, &class, cp.dir().join("traefik-web.log"))
            .unwrap();
    let origin = format!("http://127.0.0.1:{}", traefik.https_port());
    // Traefik routes once it has read the Ingress: the page from the app, an unsigned video refused by the sidecar.
    let http = HttpClient::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http::<Empty<Bytes>>();
    let get = |path: &str| {
        let req = http::Request::get(format!("{origin}{path}")).body(Empty::new()).unwrap();
        let http = http.clone();
        async move {
            let resp = tokio::time::timeout(Duration::from_secs(5), http.request(req)).await.ok()?.ok()?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        }
    };
    eventually("Traefik routes / to the app and /videos to the sidecar", Duration::from_secs(30), || async {
        let (page_status, page) = get("/player.html").await?;
        let (video_status, _) = get("/videos/film/index.m3u8").await?;
        (page_status == 200 && page.windows(11).any(|w| w == b"window.play") && [401, 403].contains(&video_status))
            .then_some(())
    })
    .await;

    // The backend mints a token for the title's folder (carrier=token, prefix=1); the page trades it for the cookie.
    let backend = running_backend(client, ns, "web").await;
    let (_, signed) = backend
        .sign_with(&origin, "/videos/film/index.m3u8", "token&prefix=1")
        .await
        .unwrap_or_else(|e| panic!("web: {e}"));
    let token = signed.split("token=").nth(1).unwrap().split('&').next().unwrap().to_string();
    let scenarios = serde_json::json!([
        { "name": "hls.js from the app's origin, session cookie", "kind": "hls", "credentials": true,
          "session": format!("{origin}/videos/session?token={token}"),
          "url": format!("{origin}/videos/film/index.m3u8") },
        { "name": "no session", "kind": "hls", "credentials": true, "timeoutMs": 4000,
          "url": format!("{origin}/videos/film/index.m3u8") },
    ]);
    let page = format!("{origin}/player.html");
    let reports = tokio::task::spawn_blocking(move || play_on_page(&page, scenarios)).await.unwrap();
    let (r, refused) = (&reports[0], &reports[1]);
    let context = || format!("{r}\n--- traefik\n{}", tail(&traefik.log(), 20));
    assert_eq!(r["session"], 200, "the session was opened: {}", context());
    assert!(r["errors"].as_array().unwrap().is_empty(), "Chromium: {}", context());
    assert_eq!(r["ended"], true, "played to the end: {}", context());
    let duration = r["duration"].as_f64().unwrap();
    assert!((3.5..4.6).contains(&duration), "the whole film: {r}");
    let cookies = r["kept"].as_array().unwrap();
    assert_eq!(cookies.len(), 1, "one cookie, the session: {cookies:?}");
    assert_eq!(cookies[0]["name"], vd_token::COOKIE_NAME);
    assert_eq!(cookies[0]["sameSite"], "Strict", "a first-party cookie, not SameSite=None: {cookies:?}");
    assert_eq!(cookies[0]["httpOnly"], true, "{cookies:?}");
    assert!(!refused["errors"].as_array().unwrap().is_empty(), "without the session the sidecar refuses: {refused}");
    assert!(refused["kept"].as_array().unwrap().is_empty(), "{refused}");
    step("Chromium played from the app's origin with a SameSite=Strict session cookie");
}

/// What the final stage of a Dockerfile says about the image.
#[derive(Debug, Default)]
struct Stage {
    base: String,
    /// (copied file or folder, destination)
    copies: Vec<(String, String)>,
    user: String,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    workdir: Option<String>,
    ports: Vec<String>,
}

fn final_stage(dockerfile: &str) -> Stage {
    let text = std::fs::read_to_string(dockerfile).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let mut stage = Stage { base: lines[from][5..].to_string(), ..Default::default() };
    for l in &lines[from + 1..] {
        let (op, rest) = l.split_once(' ').unwrap();
        match op {
            "COPY" => {
                let args: Vec<&str> = rest.split_whitespace().filter(|a| !a.starts_with("--")).collect();
                stage.copies.push((args[0].to_string(), args[1].to_string()));
            }
            "USER" => stage.user = rest.trim().to_string(),
            "ENTRYPOINT" => stage.entrypoint = Some(serde_json::from_str(rest).unwrap()),
            "CMD" => stage.cmd = Some(serde_json::from_str(rest).unwrap()),
            "WORKDIR" => stage.workdir = Some(rest.trim().to_string()),
            "EXPOSE" => stage.ports.extend(rest.split_whitespace().map(|p| format!("{p}/tcp"))),
            other => panic!("{dockerfile}: {other} in the final stage: extend scripts/images.sh and this test"),
        }
    }
    stage
}

/// `tar -xOf archive member`.
fn tar_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("tar").arg("-xOf").arg(archive).arg(member).output().unwrap();
    assert!(out.status.success(), "{member} in {}", archive.display());
    out.stdout
}

/// scripts/images.sh builds the images from the Dockerfiles' final stage (one definition): the images the node
/// runs have the Dockerfile's user, entrypoint, command, working directory, exposed ports and files, and what the
/// distroless base provides (the nonroot user, CA certificates, the C library the binary links; for the Node.js
/// base, node at /nodejs/bin/node as the entrypoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_are_what_the_dockerfiles_say() {
    let node = node();
    for (dockerfile, archive, image) in [
        ("agent/Dockerfile", "agent", "ghcr.io/videodelivery/agent:0.1.0"),
        ("operator/Dockerfile", "operator", "ghcr.io/videodelivery/operator:0.1.0"),
        ("examples/backend/Dockerfile", "backend", BACKEND_IMAGE),
    ] {
        let stage = final_stage(&format!("{}/../{dockerfile}", env!("CARGO_MANIFEST_DIR")));
        // What the base adds: its entrypoint, and executables the copies must be or the base has.
        let (entrypoint, executables): (Vec<String>, Vec<&str>) = match stage.base.as_str() {
            "gcr.io/distroless/cc-debian12:nonroot" => {
                (stage.entrypoint.clone().unwrap(), stage.copies.iter().map(|(_, d)| d.as_str()).collect())
            }
            "gcr.io/distroless/nodejs20-debian12:nonroot" => {
                (stage.entrypoint.clone().unwrap_or_else(|| vec!["/nodejs/bin/node".into()]), vec!["/nodejs/bin/node"])
            }
            other => panic!("{dockerfile}: scripts/images.sh does not stand in for {other}"),
        };
        // The image as the node's runtime sees it.
        let info: serde_json::Value =
            serde_json::from_str(&node.crictl(&["inspecti", "-o", "json", image]).unwrap()).unwrap();
        let config = &info["info"]["imageSpec"]["config"];
        assert_eq!(config["User"], stage.user.as_str(), "{dockerfile}: {config}");
        assert_eq!(config["Entrypoint"], serde_json::json!(entrypoint), "{dockerfile}: {config}");
        assert_eq!(config["Cmd"], serde_json::json!(stage.cmd), "{dockerfile}: {config}");
        let workdir = stage.workdir.as_deref().unwrap_or("/home/nonroot");
        assert_eq!(config["WorkingDir"], workdir, "{dockerfile}: {config}");
        let exposed: Vec<String> =
            config["ExposedPorts"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        assert_eq!(exposed, stage.ports, "{dockerfile}");
        // The files, from the archive the node imported.
        let archive = Path::new("/run/vd-node/images").join(format!("{archive}.tar"));
        let index: serde_json::Value = serde_json::from_slice(&tar_member(&archive, "index.json")).unwrap();
        let blob =
            |digest: &str| tar_member(&archive, &format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")));
        let manifest: serde_json::Value =
            serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
        let layer = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(layer.path(), blob(manifest["layers"][0]["digest"].as_str().unwrap())).unwrap();
        let listing = Command::new("tar").arg("-tvf").arg(layer.path()).output().unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        // The regular file at `path`, or the first one under it when it is a folder (the backend's compiled SDK).
        let file = |path: &str| {
            let path = path.trim_start_matches('/');
            listing
                .lines()
                .filter(|l| l.starts_with('-'))
                .find(|l| l.ends_with(&format!(" {path}")) || l.contains(&format!(" {path}/")))
        };
        for (_, dst) in &stage.copies {
            assert!(file(dst).is_some(), "{dockerfile}: {dst} in {listing}");
        }
        for exe in executables {
            assert!(file(exe).is_some_and(|e| e.starts_with("-rwx")), "{dockerfile}: {exe} executable in {listing}");
        }
        let passwd = String::from_utf8(tar_member(layer.path(), "etc/passwd")).unwrap();
        let uid = stage.user.split(':').next().unwrap();
        assert!(passwd.lines().any(|l| l.split(':').nth(2) == Some(uid)), "{dockerfile}: user {uid} in {passwd}");
        assert!(listing.contains("etc/ssl/certs/ca-certificates.crt"), "{dockerfile}: CA certificates");
        assert!(listing.contains("libc.so.6"), "{dockerfile}: the C library");
    }
}

/// The host names viewers use in the HTTPS scenario; Chromium and curl resolve them to the node address.
const GATEWAY_HOST: &str = "gw.example.test";
const INGRESS_HOST: &str = "ing.example.test";
/// The player page's site in the HTTPS scenario: another site than the gateway's.
const PAGE_HOST: &str = "app.example.net";

/// A `kubernetes.io/tls` Secret holding `leaf`.
async fn tls_secret(client: &Client, ns: &str, name: &str, leaf: &vd_testsupport::Leaf) {
    let secret = Secret {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".into(), ByteString(leaf.cert.clone())),
            ("tls.key".into(), ByteString(leaf.key.clone())),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &secret).await.unwrap();
}

/// What curl saw of one HTTPS request: status, HTTP version, body.
struct Curled {
    status: String,
    version: String,
    body: Vec<u8>,
}

/// One request with curl over HTTPS, trusting only `ca`, with `url`'s host resolved to the node address and an
/// optional byte range; HTTP/2 offered by ALPN as a browser does. Err is curl's complaint (a certificate it does
/// not trust, no connection).
fn curl(ca: &Path, url: &str, range: Option<(usize, usize)>) -> Result<Curled, String> {
    let authority = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--http2", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{authority}:{}", vd_testsupport::NODE_IP))
        .arg("-o")
        .arg(out_file.path())
        .args(["-w", "%{http_code} %{http_version}"]);
    if let Some((from, to)) = range {
        cmd.arg("-r").arg(format!("{from}-{to}"));
    }
    let out = cmd.arg(url).output().expect("curl runs");
    let written = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, version) = written.split_once(' ').unwrap_or((&written, ""));
    if !out.status.success() {
        return Err(format!("curl {url}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(Curled { status: status.into(), version: version.into(), body: std::fs::read(out_file.path()).unwrap() })
}

/// Viewers reach the agents over HTTPS through a real gateway: Traefik (its Gateway API and Ingress providers)
/// runs against the node's cluster; a VideoDelivery with `expose.gateway` gets an HTTPRoute on a Gateway whose HTTPS
/// listener's certificate comes from a Secret signed by a test CA, and one with `expose.ingress` an Ingress with a
/// TLS Secret. The operator says Exposed=True only once Traefik has accepted the route and published the Ingress's
/// address; then signed range requests through both answer the exact bytes over HTTP/2, and unsigned ones are refused.
/// Chromium, trusting the test CA, plays HLS (hls.js) through the Gateway over HTTP/2 from a page on another site.
/// A route whose hostname the listener does not allow is refused by Traefik, and the operator says so.
async fn viewers_over_https(node: &'static Node, started: Instant) {
    use videodelivery_operator::crd::VideoDelivery;
    let step = |what: &str| eprintln!("[+{:>5.1}s] https: {what}", started.elapsed().as_secs_f64());
    let cp = node.control_plane();
    let client = cp.client().await.unwrap();
    common::install_gateway_api_crds(cp);
    let traefik =
        vd_testsupport::Traefik::start(cp.kubeconfig(), vd_testsupport::NODE_IP, cp.dir().join("traefik.log")).unwrap();
    let port = traefik.https_port();
    let ca = vd_testsupport::TestCa::new().unwrap();
    let s3 = S3Server::start_on(vd_testsupport::NODE_IP).unwrap();
    let video = film(2 * 1024 * 1024, 5);
    s3.put("media", "films/a.mp4", &video).unwrap();
    let hls = tempfile::tempdir().unwrap();
    make_hls(hls.path());
    for e in std::fs::read_dir(hls.path()).unwrap() {
        let p = e.unwrap().path();
        let key = format!("films/hls/{}", p.file_name().unwrap().to_string_lossy());
        s3.put("media", &key, &std::fs::read(&p).unwrap()).unwrap();
    }
    s3.put("media", "films/play.mp4", &make_mp4()).unwrap();
    let page_port = common::free_port();
    let ns = node.namespace("https").await.unwrap();
    create_s3_credentials(&client, &ns).await;
    tls_secret(&client, &ns, "gateway-tls", &ca.issue(&[GATEWAY_HOST]).unwrap()).await;

    // The classes Traefik serves, and a Gateway with one HTTPS listener on Traefik's entrypoint, for *.example.test.
    let apply = |yaml: String| kubectl(node, &ns, &["apply", "--server-side", "-f", "-"], &yaml);
    apply(format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: traefik}}\n\
         spec: {{controllerName: {}}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: traefik}}\nspec: {{controller: {}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: public}}\n\
         spec:\n  gatewayClassName: traefik\n  listeners:\n  - name: https\n    protocol: HTTPS\n    port: {port}\n    hostname: '*.example.test'\n    \
         tls: {{mode: Terminate, certificateRefs: [{{name: gateway-tls}}]}}\n",
        vd_testsupport::Traefik::GATEWAY_CONTROLLER,
        vd_testsupport::Traefik::INGRESS_CONTROLLER,
    ));
    // The player page lives on another site (app.example.net); hls.js gets a token on the playlist only.
    common::create(
        &client,
        &ns,
        "gw",
        &format!(
            "{}\nagents: {{replicas: 1, rateLimit: {{requestsPerSecond: 0}}, corsOrigins: ['https://{PAGE_HOST}:{page_port}'], \
             playback: {{rewriteManifests: true}}}}\n\
             expose: {{gateway: {{parentRefs: [{{name: public, sectionName: https}}], hostnames: [{GATEWAY_HOST}]}}}}",
            s3_storage(&s3)
        ),
    )
    .await;
    // A hostname the listener does not allow: Traefik refuses the route (no agents needed for that).
    common::create(
        &client,
        &ns,
        "stray",
        &format!(
            "{}\nagents: {{replicas: 0}}\n\
             expose: {{gateway: {{parentRefs: [{{name: public, sectionName: https}}], hostnames: [video.example.org]}}}}",
            s3_storage(&s3)
        ),
    )
    .await;
    common::create(
        &client,
        &ns,
        "ing",
        &format!(
            "{}\nagents: {{replicas: 1, rateLimit: {{requestsPerSecond: 0}}, corsOrigins: ['https://{PAGE_HOST}:{page_port}'], \
             playback: {{rewriteManifests: true}}}}\n\
             expose: {{ingress: {{className: traefik, host: {INGRESS_HOST}, tlsSecretName: ingress-tls}}}}",
            s3_storage(&s3)
        ),
    )
    .await;
    // Each VideoDelivery has its own keyring, so its own backend to sign for it.
    deploy_backend(&client, &ns, "gw", 600).await;
    deploy_backend(&client, &ns, "ing", 600).await;
    step("Traefik started; waiting for the agents and for Exposed");
    // Ready needs Exposed=True: Traefik accepted the route, published the Ingress's address.
    agents_ready(&client, &ns, "gw", 1).await;
    agents_ready(&client, &ns, "ing", 1).await;
    // The Ingress's certificate arrives once the agents are up, as cert-manager issues one after the Ingress is
    // made. The order matters with Traefik v3.6: its providers ignore an EndpointSlice change that only flips an
    // endpoint to ready (v3.7 fixed it, but needs Gateway API v1.6), so they route to agents that became ready
    // only after some other event, such as this Secret (both providers watch Secrets), makes them look again.
    tls_secret(&client, &ns, "ingress-tls", &ca.issue(&[INGRESS_HOST]).unwrap()).await;
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    for (name, reason, by, url) in [
        (
            "gw",
            "HTTPRouteAccepted",
            format!("accepted by Gateway {ns}/public (traefik.io/gateway-controller)"),
            GATEWAY_HOST,
        ),
        ("ing", "IngressAddressed", format!("its controller serves it at {}", vd_testsupport::NODE_IP), INGRESS_HOST),
    ] {
        let vd = vds.get(name).await.unwrap();
        let c = common::condition(&vd, "Exposed").unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", reason), "{name}: {}", c.message);
        assert!(c.message.ends_with(&format!("({by})")), "{name}: {}", c.message);
        assert_eq!(vd.status.unwrap().url.as_deref(), Some(format!("https://{url}/videos/").as_str()));
    }
    let refused = eventually("Traefik refuses HTTPRoute stray", Duration::from_secs(60), || async {
        let vd = vds.get("stray").await.ok()?;
        let c = common::condition(&vd, "Exposed")?;
        let url = vd.status.as_ref().and_then(|s| s.url.clone());
        (c.reason == "RouteNotAccepted").then(|| (c.status.clone(), c.message.clone(), url))
    })
    .await;
    assert_eq!(
        refused,
        (
            "False".to_string(),
            format!("Gateway {ns}/public did not accept HTTPRoute stray: Accepted=False (NoMatchingListenerHostname)"),
            Some(format!("http://stray-agent.{ns}.svc/videos/"))
        ),
        "Traefik's own reason, as the operator reports it, and no public URL"
    );
    step("Exposed=True from Traefik (and RouteNotAccepted for a stray hostname); signed ranges over HTTPS");

    for (name, host) in [("gw", GATEWAY_HOST), ("ing", INGRESS_HOST)] {
        let backend = running_backend(&client, &ns, name).await;
        let base = format!("https://{host}:{port}");
        let url = backend.url(&base, "/videos/films/a.mp4").await;
        let offset = 777_777;
        // Traefik accepts a route and publishes an Ingress's address before it routes to the agents (404, 503)
        // and before it has loaded the certificate (it serves a self-signed one meanwhile): the first request may
        // fail for a moment.
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            match curl(ca.ca_file().as_path(), &url, Some((offset, offset + 99_999))) {
                Ok(got) if !["404", "503"].contains(&got.status.as_str()) => break got,
                Ok(_) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
                Ok(got) => break got,
                Err(e) => panic!("{e}\n--- traefik\n{}", tail(&traefik.log(), 20)),
            }
        };
        let context = || format!("{base}: {}\n--- traefik\n{}", got.status, tail(&traefik.log(), 20));
        assert_eq!(got.status, "206", "{}", context());
        assert_eq!(got.version, "2", "HTTP/2 through the gateway: {}", context());
        assert!(got.body == video[offset..offset + 100_000], "exact bytes through {host}");
        let unsigned = curl(ca.ca_file().as_path(), &format!("{base}/videos/films/a.mp4"), Some((0, 0))).unwrap();
        assert!(["401", "403"].contains(&unsigned.status.as_str()), "unsigned through {host}: {}", unsigned.status);
    }

    // Chromium, trusting the test CA through its NSS database, plays from a page on another site through Traefik
    // over HTTP/2: MP4, hls.js and the cookie session (default SameSite=None; Secure; Partitioned) through the
    // Gateway, MP4 and hls.js through the Ingress.
    step("Chromium plays MP4, hls.js and a cookie session through the Gateway, MP4 and hls.js through the Ingress");
    let (gw_base, ing_base) = (format!("https://{GATEWAY_HOST}:{port}"), format!("https://{INGRESS_HOST}:{port}"));
    let (gw, ing) = (running_backend(&client, &ns, "gw").await, running_backend(&client, &ns, "ing").await);
    let master = "/videos/films/hls/index.m3u8";
    let session = gw.url_with(&gw_base, master, "token&prefix=1").await;
    let session_token = session.split("token=").nth(1).unwrap().split('&').next().unwrap().to_string();
    let page = ca.issue(&[PAGE_HOST]).unwrap();
    let pem = tempfile::tempdir().unwrap();
    let (page_cert, page_key) = (pem.path().join("page.crt"), pem.path().join("page.key"));
    std::fs::write(&page_cert, &page.cert).unwrap();
    std::fs::write(&page_key, &page.key).unwrap();
    let scenarios = serde_json::json!([
        { "name": "hls.js through the Gateway", "kind": "hls", "url": gw.url_with(&gw_base, master, "token").await },
        { "name": "MP4 through the Gateway", "kind": "mp4",
          "url": gw.url_with(&gw_base, "/videos/films/play.mp4", "query").await },
        { "name": "hls.js through the Gateway, cookie session from another site", "kind": "hls", "credentials": true,
          "session": format!("{gw_base}/videos/session?token={session_token}"), "url": format!("{gw_base}{master}") },
        { "name": "MP4 through the Ingress", "kind": "mp4",
          "url": ing.url_with(&ing_base, "/videos/films/play.mp4", "query").await },
        { "name": "hls.js through the Ingress", "kind": "hls", "url": ing.url_with(&ing_base, master, "token").await },
    ]);
    let config = serde_json::json!({
        "port": page_port,
        "ca": ca.ca_file(),
        "hosts": { GATEWAY_HOST: vd_testsupport::NODE_IP, INGRESS_HOST: vd_testsupport::NODE_IP, PAGE_HOST: "127.0.0.1" },
        "page": { "host": PAGE_HOST, "cert": page_cert, "key": page_key },
        "scenarios": scenarios,
    });
    let reports = tokio::task::spawn_blocking(move || play_in_chromium_with(config)).await.unwrap();
    assert_eq!(reports.len(), 5);
    for (r, base) in reports.iter().zip([&gw_base, &gw_base, &gw_base, &ing_base, &ing_base]) {
        let context = || format!("{r}\n--- traefik\n{}", tail(&traefik.log(), 20));
        assert!(r["errors"].as_array().unwrap().is_empty(), "Chromium: {}", context());
        assert_eq!(r["ended"], true, "played to the end: {}", context());
        let duration = r["duration"].as_f64().unwrap();
        assert!((3.5..4.6).contains(&duration), "the whole film: {r}");
        // Every response from Traefik, media element loads included, as Chromium's network stack saw it.
        let through: Vec<&serde_json::Value> =
            r["network"].as_array().unwrap().iter().filter(|e| e["url"].as_str().unwrap().starts_with(base)).collect();
        let least = if r["name"].as_str().unwrap().starts_with("MP4") { 1 } else { 3 };
        assert!(through.len() >= least, "requests through {base}: {r}");
        assert!(through.iter().all(|e| e["protocol"] == "h2"), "h2 through {base}: {through:?}");
    }
    let cookie = &reports[2];
    assert_eq!(cookie["session"], 200, "the session was opened through the Gateway: {cookie}");
    assert_eq!(cookie["cookies"], serde_json::json!(["sent"]), "the cookie went with each request: {cookie}");
    let kept = cookie["kept"].as_array().unwrap();
    assert!(
        kept.iter().any(|c| c["name"] == vd_token::COOKIE_NAME && c["sameSite"] == "None" && c["secure"] == true),
        "the session cookie, SameSite=None; Secure: {kept:?}"
    );
    step("done");
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client).delete(&ns, &DeleteParams::default()).await;
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
