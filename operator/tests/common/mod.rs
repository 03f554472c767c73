//! Shared by the operator's tests: the operator binary as a process against the test control plane.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use vd_testsupport::{ControlPlane, Process};
use videodelivery_operator::crd::{SigningFloors, VideoDelivery, VideoDeliverySpec, crd_with_floors};

pub const AGENT_IMAGE: &str = "registry.example/videodelivery-agent:test";

/// The operator binary, watching one namespace, as it runs in a pod.
pub struct Operator {
    pub process: Process,
    pub admin: SocketAddr,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Operator {
    pub fn start(cp: &ControlPlane, namespace: &str, extra: &[&str]) -> Operator {
        Self::start_with_kubeconfig(cp, cp.kubeconfig(), namespace, extra)
    }

    pub fn start_with_kubeconfig(
        cp: &ControlPlane,
        kubeconfig: &std::path::Path,
        namespace: &str,
        extra: &[&str],
    ) -> Operator {
        lower_signing_floors(cp);
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_videodelivery-operator"));
        cmd.env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,videodelivery_operator=debug")
            .arg(format!("--namespace={namespace}"))
            .arg(format!("--admin-listen={admin}"))
            .arg(format!("--agent-image={AGENT_IMAGE}"))
            .args(TEST_FLOOR_FLAGS)
            .args(extra);
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = cp.dir().join(format!("operator-{namespace}-{n}.log"));
        Operator { process: Process::spawn(cmd, log).unwrap(), admin }
    }

    /// The operator's /metrics text (empty while it is not listening yet).
    pub async fn metrics(&self) -> String {
        let Ok(mut stream) = tokio::net::TcpStream::connect(self.admin).await else { return String::new() };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }
}

/// Rotation tests run in seconds, far below the production floors on signing timings. They lower the floors the
/// documented way: the operator's flags, and the CRD generated with the same floors.
pub const TEST_FLOOR_FLAGS: [&str; 3] =
    ["--min-propagation-delay=1s", "--min-token-lifetime=1s", "--min-rotation-interval=1s"];

pub fn test_floors() -> SigningFloors {
    let one = vd_token::duration::GoDuration::from_secs(1);
    SigningFloors { propagation_delay: one, token_lifetime: one, rotation_interval: one }
}

/// Replaces this test binary's CRD (each binary has its own control plane) with one whose floors are
/// [`test_floors`], once, and waits until the API server enforces the new rules.
pub fn lower_signing_floors(cp: &ControlPlane) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let yaml = serde_yaml_ng::to_string(&crd_with_floors(&test_floors())).unwrap();
        let path = cp.dir().join("crd-test-floors.yaml");
        std::fs::write(&path, yaml).unwrap();
        let kubectl = vd_testsupport::binary("kubectl").unwrap();
        let run = |args: &[&str]| {
            Command::new(&kubectl).env("KUBECONFIG", cp.kubeconfig()).args(args).output().unwrap()
        };
        let out = run(&["apply", "--server-side", "--force-conflicts", "-f", path.to_str().unwrap()]);
        assert!(out.status.success(), "lowering the CRD's floors: {}", String::from_utf8_lossy(&out.stderr));
        let probe = cp.dir().join("floor-probe.yaml");
        std::fs::write(
            &probe,
            "apiVersion: videodelivery.dev/v1alpha1\nkind: VideoDelivery\nmetadata: {name: floor-probe, namespace: default}\n\
             spec: {storage: {url: 's3://videos'}, signing: {rotationInterval: 8s, propagationDelay: 2s, maxTokenLifetime: 3s, clockSkew: 1s}}\n",
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = run(&["create", "--dry-run=server", "-f", probe.to_str().unwrap()]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the API server kept the production floors: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

/// Polls `check` until it returns Some, or fails the test after `limit`, naming what did not happen.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn spec(yaml: &str) -> VideoDeliverySpec {
    serde_yaml_ng::from_str(yaml).unwrap()
}

pub async fn create(client: &Client, ns: &str, name: &str, yaml: &str) -> VideoDelivery {
    let api: Api<VideoDelivery> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &VideoDelivery::new(name, spec(yaml))).await.unwrap()
}

pub fn condition<'a>(
    vd: &'a VideoDelivery,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    vd.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// Waits until the VideoDelivery's Ready condition has `status` (and `reason`, when given).
pub async fn wait_ready(client: &Client, ns: &str, name: &str, status: &str, reason: Option<&str>) -> VideoDelivery {
    let api: Api<VideoDelivery> = Api::namespaced(client.clone(), ns);
    eventually(&format!("{name} Ready={status} {reason:?}"), Duration::from_secs(60), || async {
        let vd = api.get(name).await.ok()?;
        let c = condition(&vd, "Ready")?;
        (c.status == status && reason.is_none_or(|r| c.reason == r)).then_some(vd.clone())
    })
    .await
}

/// The keyring in the Secret the operator keeps.
pub async fn keyring(client: &Client, ns: &str, name: &str) -> Option<(vd_token::Keyring, Secret)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api.get_opt(&format!("{name}-keyring")).await.ok()??;
    let ring = vd_token::Keyring::from_json(&s.data.as_ref()?.get("keyring.json")?.0).ok()?;
    Some((ring, s))
}

pub fn selector(name: &str) -> String {
    format!("app.kubernetes.io/name=videodelivery-agent,app.kubernetes.io/instance={name}")
}

pub fn rv<K: ResourceExt>(k: &K) -> String {
    k.resource_version().unwrap_or_default()
}

/// The Prometheus Operator release whose PodMonitor CRD the tests install: the real one, from the project's Go
/// module (its `example/prometheus-operator-crd/`), fetched through the Go module proxy like the control plane.
const PROMETHEUS_OPERATOR: &str = "github.com/prometheus-operator/prometheus-operator@v0.85.0";

/// Installs the real PodMonitor CRD into this test binary's control plane, once, and waits until it is served.
pub fn install_podmonitor_crd(cp: &ControlPlane) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let out = Command::new("go").args(["mod", "download", "-json", PROMETHEUS_OPERATOR]).output();
        let out = out.expect("the go command is needed to fetch the Prometheus Operator's CRDs");
        assert!(
            out.status.success(),
            "go mod download {PROMETHEUS_OPERATOR}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let dir = std::path::PathBuf::from(info["Dir"].as_str().unwrap());
        let crd = dir.join("example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml");
        let kubectl = vd_testsupport::binary("kubectl").unwrap();
        let run =
            |args: &[&str]| Command::new(&kubectl).env("KUBECONFIG", cp.kubeconfig()).args(args).output().unwrap();
        let out = run(&["apply", "--server-side", "-f", crd.to_str().unwrap()]);
        assert!(out.status.success(), "installing the PodMonitor CRD: {}", String::from_utf8_lossy(&out.stderr));
        let out =
            run(&["wait", "--for=condition=Established", "crd/podmonitors.monitoring.coreos.com", "--timeout=30s"]);
        assert!(
            out.status.success(),
            "the PodMonitor CRD was not established: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The Gateway API release whose standard-channel CRDs the tests install: the real ones, from its Go module.
const GATEWAY_API: &str = "sigs.k8s.io/gateway-api@v1.4.0";

/// Installs the Gateway API's standard-channel CRDs (GatewayClass, Gateway, HTTPRoute, and the GRPCRoute,
/// ReferenceGrant and BackendTLSPolicy a gateway such as Traefik watches too) into this test binary's control plane,
/// once, and waits until they are served.
pub fn install_gateway_api_crds(cp: &ControlPlane) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let out = Command::new("go").args(["mod", "download", "-json", GATEWAY_API]).output();
        let out = out.expect("the go command is needed to fetch the Gateway API's CRDs");
        assert!(out.status.success(), "go mod download {GATEWAY_API}: {}", String::from_utf8_lossy(&out.stdout));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let dir = std::path::PathBuf::from(info["Dir"].as_str().unwrap()).join("config/crd/standard");
        let kubectl = vd_testsupport::binary("kubectl").unwrap();
        let run =
            |args: &[&str]| Command::new(&kubectl).env("KUBECONFIG", cp.kubeconfig()).args(args).output().unwrap();
        for kind in ["gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants", "backendtlspolicies"]
        {
            let crd = dir.join(format!("gateway.networking.k8s.io_{kind}.yaml"));
            let out = run(&["apply", "--server-side", "-f", crd.to_str().unwrap()]);
            assert!(out.status.success(), "installing the {kind} CRD: {}", String::from_utf8_lossy(&out.stderr));
            let out = run(&[
                "wait",
                "--for=condition=Established",
                &format!("crd/{kind}.gateway.networking.k8s.io"),
                "--timeout=30s",
            ]);
            assert!(
                out.status.success(),
                "the {kind} CRD was not established: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

/// A Gateway named `name` in `ns` with an HTTPS listener `https` (and a plain `http` one), for routes to attach
/// to. No controller runs in the test control plane, so it stays unprogrammed; the operator only reads listeners.
pub async fn create_gateway(client: &Client, ns: &str, name: &str) {
    let ar = videodelivery_operator::resources::gateways_api_resource();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let mut gw = kube::api::DynamicObject::new(name, &ar);
    gw.data = serde_json::json!({"spec": {
        "gatewayClassName": "test",
        "listeners": [
            {"name": "http", "protocol": "HTTP", "port": 80},
            {"name": "https", "protocol": "HTTPS", "port": 443,
             "tls": {"mode": "Terminate", "certificateRefs": [{"name": "gateway-cert"}]}},
        ],
    }});
    api.create(&PostParams::default(), &gw).await.unwrap();
}

/// Writes what a Gateway's controller writes into an HTTPRoute's status: the Gateway `public` (listener https) has
/// `Accepted` = `accepted` with `reason` and `message`, and resolved the backends.
pub async fn gateway_says(routes: &Api<DynamicObject>, name: &str, accepted: &str, reason: &str, message: &str) {
    let generation = routes.get(name).await.unwrap().metadata.generation.unwrap_or(1);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        serde_json::json!({"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": now, "observedGeneration": generation})
    };
    let status = serde_json::json!({"status": {"parents": [{
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "sectionName": "https"},
        "controllerName": "example.com/gateway-controller",
        "conditions": [
            condition("Accepted", accepted, reason, message),
            condition("ResolvedRefs", "True", "ResolvedRefs", ""),
        ],
    }]}});
    routes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
}
