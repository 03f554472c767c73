//! The objects a VideoDelivery owns, built as pure functions of its spec so they can be tested without a cluster
//! and applied with Server-Side Apply as whole intents.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, HTTPGetAction, KeyToPath,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, Secret, SecretEnvSource, SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec as CoreServiceSpec, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::VideoDelivery;
use crate::keyring::KEYRING_FILE;

/// The annotation on the pod template that rolls the agents when their configuration changes. Keys are not part
/// of it: a rotation reaches running agents through the mounted Secret, without a restart.
pub const CONFIG_HASH_ANNOTATION: &str = "videodelivery.dev/config-hash";
pub const KEYRING_MOUNT: &str = "/etc/videodelivery/keyring";
/// Where `spec.tls.secretName` is mounted; the agent's `--tls-cert` and `--tls-key` point into it.
pub const TLS_MOUNT: &str = "/etc/videodelivery/tls";
/// Where the `emptyDir` of `spec.agents.diskCache` is mounted; the agent's `--disk-cache-dir`.
pub const DISK_CACHE_MOUNT: &str = "/var/cache/videodelivery";
pub const HTTP_PORT: i32 = 8080;
pub const ADMIN_PORT: i32 = 9090;
/// The agent's `--shutdown-delay`: after SIGTERM it fails readiness but keeps accepting this long, while the
/// endpoint removal reaches kube-proxy and load balancers, so a rolling update drops no new connection.
const SHUTDOWN_DELAY_SECONDS: i64 = 5;
/// The agent's `--shutdown-grace`: running streams then have this long to finish.
const SHUTDOWN_GRACE_SECONDS: i64 = 30;
pub const AGENT_UID: i64 = 65532;

pub fn keyring_secret_name(vd: &VideoDelivery) -> String {
    format!("{}-keyring", vd.name_any())
}
pub fn agent_name(vd: &VideoDelivery) -> String {
    format!("{}-agent", vd.name_any())
}

/// Labels on everything the operator makes; the selector part must never change for a given resource.
pub fn selector_labels(vd: &VideoDelivery) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "videodelivery-agent".into()),
        ("app.kubernetes.io/instance".into(), vd.name_any()),
    ])
}

pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "videodelivery-operator");

fn labels(vd: &VideoDelivery) -> BTreeMap<String, String> {
    let mut l = selector_labels(vd);
    l.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    l
}

fn owner(vd: &VideoDelivery) -> OwnerReference {
    // controller_owner_ref is None only for an object without a name or uid, which the API server never returns.
    vd.controller_owner_ref(&()).unwrap_or_default()
}

fn meta(vd: &VideoDelivery, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: vd.namespace(),
        labels: Some(labels(vd)),
        owner_references: Some(vec![owner(vd)]),
        ..Default::default()
    }
}

/// The keyring Secret with its data; `handled` records the rotation request acted on.
pub fn keyring_secret(
    vd: &VideoDelivery,
    data: BTreeMap<String, k8s_openapi::ByteString>,
    handled: Option<&str>,
) -> Secret {
    let mut meta = meta(vd, keyring_secret_name(vd));
    if let Some(h) = handled {
        meta.annotations =
            Some(BTreeMap::from([(crate::keyring::ROTATION_HANDLED_ANNOTATION.to_string(), h.to_string())]));
    }
    Secret { metadata: meta, type_: Some("Opaque".into()), data: Some(data), ..Default::default() }
}

pub fn service_account(vd: &VideoDelivery) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(vd, agent_name(vd)),
        // The agent never talks to the API server.
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// The scheme the agents speak: https with `spec.tls`. It names the container and Service port too, so that
/// meshes, ingress controllers and `kubectl describe` see the protocol.
pub fn agent_scheme(vd: &VideoDelivery) -> &'static str {
    if vd.spec.tls.is_some() { "https" } else { "http" }
}

pub fn service(vd: &VideoDelivery) -> Service {
    let mut metadata = meta(vd, agent_name(vd));
    if !vd.spec.service.annotations.is_empty() {
        metadata.annotations = Some(vd.spec.service.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(CoreServiceSpec {
            type_: Some(vd.spec.service.type_.clone()),
            selector: Some(selector_labels(vd)),
            ports: Some(vec![ServicePort {
                name: Some(agent_scheme(vd).into()),
                port: vd.spec.service.port,
                target_port: Some(IntOrString::String(agent_scheme(vd).into())),
                protocol: Some("TCP".into()),
                app_protocol: Some(agent_scheme(vd).into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// In-cluster URL of the agents, route prefix included.
pub fn url(vd: &VideoDelivery) -> String {
    let scheme = agent_scheme(vd);
    let port = match (scheme, vd.spec.service.port) {
        ("http", 80) | ("https", 443) => String::new(),
        (_, p) => format!(":{p}"),
    };
    let ns = vd.namespace().unwrap_or_else(|| "default".into());
    format!("{scheme}://{}.{ns}.svc{port}{}/", agent_name(vd), vd.spec.agents.route_prefix.trim_end_matches('/'))
}

/// The public URL viewers use through `expose`: its first host name and the route prefix; https when the
/// exposure is known to terminate TLS (`tls` is what the operator learnt of it).
pub fn public_url(vd: &VideoDelivery, tls: bool) -> Option<String> {
    let e = vd.spec.expose.as_ref()?;
    let host = match (&e.gateway, &e.ingress) {
        (Some(g), _) => g.hostnames.first()?,
        (None, Some(i)) => &i.host,
        (None, None) => return None,
    };
    let scheme = if tls { "https" } else { "http" };
    Some(format!("{scheme}://{host}{}/", vd.spec.agents.route_prefix.trim_end_matches('/')))
}

/// The route prefix as an HTTPRoute or Ingress path prefix: both match whole segments, so a trailing `/` adds
/// nothing, and the Ingress API refuses none but the root.
fn path_prefix(vd: &VideoDelivery) -> String {
    match vd.spec.agents.route_prefix.trim_end_matches('/') {
        "" => "/".into(),
        p => p.into(),
    }
}

/// The Gateway API's HTTPRoute kind, for an `Api<DynamicObject>`.
pub fn http_route_api_resource() -> ApiResource {
    gateway_api_resource("HTTPRoute", "httproutes")
}

/// The Gateway API's Gateway kind, read to learn whether a route's listener speaks HTTPS.
pub fn gateways_api_resource() -> ApiResource {
    gateway_api_resource("Gateway", "gateways")
}

fn gateway_api_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The HTTPRoute (`{name}`) for `expose.gateway`: the route prefix on the given host names, to the agents' Service.
pub fn http_route(vd: &VideoDelivery) -> Option<DynamicObject> {
    let g = vd.spec.expose.as_ref()?.gateway.as_ref()?;
    let mut obj = DynamicObject::new(&vd.name_any(), &http_route_api_resource());
    obj.metadata = meta(vd, vd.name_any());
    let parents: Vec<serde_json::Value> = g
        .parent_refs
        .iter()
        .map(|p| {
            let mut r = serde_json::json!({"name": p.name});
            if let Some(ns) = &p.namespace {
                r["namespace"] = ns.clone().into();
            }
            if let Some(s) = &p.section_name {
                r["sectionName"] = s.clone().into();
            }
            r
        })
        .collect();
    obj.data = serde_json::json!({
        "spec": {
            "parentRefs": parents,
            "hostnames": g.hostnames,
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": path_prefix(vd)}}],
                "backendRefs": [{"name": agent_name(vd), "port": vd.spec.service.port}],
            }],
        }
    });
    Some(obj)
}

/// The Ingress (`{name}`) for `expose.ingress`: the route prefix on its host, to the agents' Service, with the
/// spec's annotations and, when a certificate Secret is named, a TLS section for the host.
pub fn ingress(vd: &VideoDelivery) -> Option<Ingress> {
    let i = vd.spec.expose.as_ref()?.ingress.as_ref()?;
    let mut metadata = meta(vd, vd.name_any());
    if !i.annotations.is_empty() {
        metadata.annotations = Some(i.annotations.clone());
    }
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: agent_name(vd),
            port: Some(ServiceBackendPort { number: Some(vd.spec.service.port), ..Default::default() }),
        }),
        ..Default::default()
    };
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: i.class_name.clone(),
            tls: i
                .tls_secret_name
                .as_ref()
                .map(|s| vec![IngressTLS { hosts: Some(vec![i.host.clone()]), secret_name: Some(s.clone()) }]),
            rules: Some(vec![IngressRule {
                host: Some(i.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath { path: Some(path_prefix(vd)), path_type: "Prefix".into(), backend }],
                }),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Where an agent container listens, what it serves and how its volumes are named. The fleet uses the defaults; an
/// injected sidecar moves its ports away from its app's, may serve one of its pod's volumes, and prefixes its names
/// so they cannot collide with the pod's own.
#[derive(Debug, Clone)]
pub struct AgentLayout<'a> {
    pub http_port: i32,
    pub admin_port: i32,
    /// Served instead of `spec.storage.url` (a sidecar serving its pod's volume as `file://`).
    pub storage: Option<&'a str>,
    /// Prefix of the container's volume and port names.
    pub prefix: &'a str,
    /// Mode of the keyring and TLS files. The fleet's pods set fsGroup, so 0440 reads; a sidecar cannot rely on its
    /// pod's fsGroup, and its volumes are mounted in the sidecar alone.
    pub secret_mode: i32,
}

impl Default for AgentLayout<'_> {
    fn default() -> Self {
        AgentLayout { http_port: HTTP_PORT, admin_port: ADMIN_PORT, storage: None, prefix: "", secret_mode: 0o440 }
    }
}

/// The agent's command line. Everything that is not a secret is a flag, so `kubectl describe` shows it.
pub fn agent_args(vd: &VideoDelivery) -> Vec<String> {
    agent_args_with(vd, &AgentLayout::default())
}

/// The agent's command line for a layout.
pub fn agent_args_with(vd: &VideoDelivery, layout: &AgentLayout) -> Vec<String> {
    let s = &vd.spec;
    let mut args = vec![
        format!("--listen=0.0.0.0:{}", layout.http_port),
        format!("--admin-listen=0.0.0.0:{}", layout.admin_port),
        format!("--storage={}", layout.storage.unwrap_or(&s.storage.url)),
        format!("--keyring={KEYRING_MOUNT}/{KEYRING_FILE}"),
        format!("--route-prefix={}", s.agents.route_prefix),
        format!("--max-token-lifetime={}", s.signing.max_token_lifetime),
        format!("--clock-skew={}", s.signing.clock_skew),
        format!("--cache-control={}", s.agents.cache_control),
        format!("--rate-limit={}", s.agents.rate_limit.requests_per_second),
        format!("--rate-burst={}", s.agents.rate_limit.burst),
        format!("--cache-size-mib={}", s.agents.cache.size_mib),
        format!("--slice-size-kib={}", s.agents.cache.slice_kib),
        format!("--stream-memory-mib={}", s.agents.cache.stream_mib),
        format!("--shutdown-delay={SHUTDOWN_DELAY_SECONDS}s"),
        format!("--shutdown-grace={SHUTDOWN_GRACE_SECONDS}s"),
        "--log-format=json".into(),
        format!("--access-log={}", s.agents.access_log.enabled),
        format!("--access-log-format={}", if s.agents.access_log.format == "text" { "text" } else { "json" }),
        // The CRD bounds it to [0, 1]; clamped so a spec that bypassed the CRD still starts agents.
        format!("--access-log-sample={}", s.agents.access_log.sample_ratio.clamp(0.0, 1.0)),
    ];
    if let Some(e) = &s.storage.endpoint {
        args.push(format!("--s3-endpoint={e}"));
    }
    if let Some(r) = &s.storage.region {
        args.push(format!("--s3-region={r}"));
    }
    if s.storage.path_style {
        args.push("--s3-path-style".into());
    }
    args.extend(s.agents.public_prefixes.iter().map(|p| format!("--public-prefix={p}")));
    args.extend(s.agents.cors_origins.iter().map(|o| format!("--cors-origin={o}")));
    // The agent takes CIDRs only; an address is its /32 or /128. An entry the CRD would refuse is left out.
    args.extend(
        s.agents
            .trusted_proxies
            .iter()
            .filter_map(|p| crate::crd::forms::ip_net(p))
            .map(|p| format!("--trusted-proxy={p}")),
    );
    let playback = &s.agents.playback;
    if playback.rewrite_manifests {
        args.push("--rewrite-manifests".into());
    }
    args.push(format!("--session-ttl={}", playback.session.ttl));
    args.push(format!("--session-cookie-same-site={}", playback.session.same_site.to_ascii_lowercase()));
    if !playback.session.secure_cookie {
        args.push("--session-cookie-insecure".into());
    }
    if !s.agents.disk_cache.is_off() {
        args.push(format!("--disk-cache-dir={DISK_CACHE_MOUNT}"));
        args.push(format!("--disk-cache-size-mib={}", s.agents.disk_cache.agent_mib()));
    }
    if s.tls.is_some() {
        args.push(format!("--tls-cert={TLS_MOUNT}/tls.crt"));
        args.push(format!("--tls-key={TLS_MOUNT}/tls.key"));
    }
    args
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("100m".into())),
            ("memory".into(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), Quantity("512Mi".into()))])),
        ..Default::default()
    }
}

/// The resourceVersions (never the content) of the Secrets that reach the agent process only at its start: the
/// storage credentials. Not the keyring or the TLS Secret, which the agent re-reads from its volume as they change.
#[derive(Debug, Clone, Copy, Default)]
pub struct SecretVersions<'a> {
    pub credentials: Option<&'a str>,
}

/// A digest of everything that reaches the agent process at start: the args, the image, and the version of the
/// storage credentials. A renewed certificate does not roll the agents: they serve it without a restart.
pub fn config_hash(vd: &VideoDelivery, image: &str, versions: SecretVersions) -> String {
    let mut h = Sha256::new();
    for a in agent_args(vd) {
        h.update(a.as_bytes());
        h.update([0]);
    }
    h.update(image.as_bytes());
    h.update([0]);
    h.update(versions.credentials.unwrap_or("").as_bytes());
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn probe(path: &str, period: i32, port: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// The agent container and the volumes it mounts: the keyring (re-read as it rotates), the TLS Secret, and the
/// media claim of `file://` storage unless the layout serves other storage. The fleet's Deployment and the injected
/// sidecar are both built here, so they cannot drift apart.
pub fn agent_container(vd: &VideoDelivery, image: &str, layout: &AgentLayout) -> (Container, Vec<Volume>) {
    let s = &vd.spec;
    let p = layout.prefix;
    let mut volumes = vec![Volume {
        name: format!("{p}keyring"),
        secret: Some(SecretVolumeSource {
            secret_name: Some(keyring_secret_name(vd)),
            // Only the keyring document: agents have no use for the separate active-key field.
            items: Some(vec![KeyToPath { key: KEYRING_FILE.into(), path: KEYRING_FILE.into(), mode: None }]),
            default_mode: Some(layout.secret_mode),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: format!("{p}keyring"),
        mount_path: KEYRING_MOUNT.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    if let (None, Some(dir), Some(claim)) =
        (layout.storage, s.storage.url.strip_prefix("file://"), &s.storage.volume_claim_name)
    {
        volumes.push(Volume {
            name: format!("{p}media"),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: format!("{p}media"),
            mount_path: dir.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if !s.agents.disk_cache.is_off() {
        volumes.push(Volume {
            name: format!("{p}disk-cache"),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: None,
                size_limit: Some(Quantity(format!("{}Mi", s.agents.disk_cache.size_mib))),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: format!("{p}disk-cache"),
            mount_path: DISK_CACHE_MOUNT.into(),
            ..Default::default()
        });
    }
    if let Some(tls) = &s.tls {
        volumes.push(Volume {
            name: format!("{p}tls"),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                // Only the certificate and key (a cert-manager Secret also holds ca.crt).
                items: Some(
                    ["tls.crt", "tls.key"].map(|k| KeyToPath { key: k.into(), path: k.into(), mode: None }).into(),
                ),
                default_mode: Some(layout.secret_mode),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: format!("{p}tls"),
            mount_path: TLS_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let env_from = s.storage.credentials_secret_ref.as_ref().map(|r| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource { name: r.name.clone(), optional: Some(false) }),
            ..Default::default()
        }]
    });
    let admin = format!("{p}admin");
    let container = Container {
        name: "agent".into(),
        image: Some(image.into()),
        args: Some(agent_args_with(vd, layout)),
        env_from,
        ports: Some(vec![
            ContainerPort {
                name: Some(format!("{p}{}", agent_scheme(vd))),
                container_port: layout.http_port,
                ..Default::default()
            },
            ContainerPort { name: Some(admin.clone()), container_port: layout.admin_port, ..Default::default() },
        ]),
        readiness_probe: Some(probe("/readyz", 5, &admin)),
        liveness_probe: Some(probe("/healthz", 10, &admin)),
        resources: Some(s.agents.resources.clone().unwrap_or_else(default_resources)),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    (container, volumes)
}

pub fn deployment(vd: &VideoDelivery, image: &str, versions: SecretVersions) -> Deployment {
    let s = &vd.spec;
    let (container, volumes) = agent_container(vd, image, &AgentLayout::default());
    let mut pod_labels = labels(vd);
    pod_labels.insert("app.kubernetes.io/component".into(), "agent".into());
    Deployment {
        metadata: meta(vd, agent_name(vd)),
        spec: Some(DeploymentSpec {
            // With autoscaling the HPA owns the replica count; leaving it out keeps the two from fighting.
            replicas: vd.spec.fixed_replicas(),
            selector: LabelSelector { match_labels: Some(selector_labels(vd)), ..Default::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".into())),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash(vd, image, versions),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(agent_name(vd)),
                    automount_service_account_token: Some(false),
                    // Delay, then grace, then a little for the process to exit; only then is it killed.
                    termination_grace_period_seconds: Some(SHUTDOWN_DELAY_SECONDS + SHUTDOWN_GRACE_SECONDS + 5),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(AGENT_UID),
                        run_as_group: Some(AGENT_UID),
                        fs_group: Some(AGENT_UID),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: (!s.agents.node_selector.is_empty()).then(|| s.agents.node_selector.clone()),
                    tolerations: (!s.agents.tolerations.is_empty()).then(|| s.agents.tolerations.clone()),
                    affinity: s.agents.affinity.clone(),
                    topology_spread_constraints: topology_spread(vd),
                    priority_class_name: s.agents.priority_class_name.clone(),
                    image_pull_secrets: (!s.agents.image_pull_secrets.is_empty())
                        .then(|| s.agents.image_pull_secrets.clone()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The spec's topology spread constraints; one without a label selector spreads this VideoDelivery's agents.
fn topology_spread(vd: &VideoDelivery) -> Option<Vec<TopologySpreadConstraint>> {
    let constraints = &vd.spec.agents.topology_spread_constraints;
    let own = LabelSelector { match_labels: Some(selector_labels(vd)), ..Default::default() };
    let empty = |s: &LabelSelector| {
        s.match_labels.as_ref().is_none_or(BTreeMap::is_empty) && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
    };
    (!constraints.is_empty()).then(|| {
        constraints
            .iter()
            .cloned()
            .map(|mut c| {
                if c.label_selector.as_ref().is_none_or(empty) {
                    c.label_selector = Some(own.clone());
                }
                c
            })
            .collect()
    })
}

/// The agents' NetworkPolicy (`{name}-agent`), when `agents.networkPolicy.enabled`: ingress to the video port from
/// the `from` peers (anyone when there are none), to the admin port only from the `metricsFrom` peers. Egress
/// stays open (storage may be anywhere). When it is disabled the controller deletes the one it owns.
pub fn network_policy(vd: &VideoDelivery) -> Option<NetworkPolicy> {
    let np = vd.spec.agents.network_policy.as_ref().filter(|np| np.enabled)?;
    let port = |name: &str| NetworkPolicyPort {
        port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        ports: Some(vec![port(agent_scheme(vd))]),
        from: (!np.from.is_empty()).then(|| np.from.clone()),
    }];
    if !np.metrics_from.is_empty() {
        ingress
            .push(NetworkPolicyIngressRule { ports: Some(vec![port("admin")]), from: Some(np.metrics_from.clone()) });
    }
    Some(NetworkPolicy {
        metadata: meta(vd, agent_name(vd)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector_labels(vd)), ..Default::default() }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..Default::default()
        }),
    })
}

/// The Prometheus Operator's PodMonitor kind, for an `Api<DynamicObject>`.
pub fn pod_monitor_api_resource() -> ApiResource {
    ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "PodMonitor".into(),
        plural: "podmonitors".into(),
    }
}

/// The agents' PodMonitor (`{name}-agent`), when `agents.metrics.podMonitor.enabled`: Prometheus scrapes `/metrics`
/// on each agent's admin port. Labels are the spec's and the operator's own; nothing in it is secret. When it is
/// disabled the controller deletes the one it owns; a cluster without the Prometheus Operator's CRDs refuses it.
pub fn pod_monitor(vd: &VideoDelivery) -> Option<DynamicObject> {
    let pm = vd.spec.agents.metrics.pod_monitor.as_ref().filter(|pm| pm.enabled)?;
    let mut metadata = meta(vd, agent_name(vd));
    let mut all_labels = pm.labels.clone();
    all_labels.extend(labels(vd));
    metadata.labels = Some(all_labels);
    let mut obj = DynamicObject::new(&agent_name(vd), &pod_monitor_api_resource());
    obj.metadata = metadata;
    obj.data = serde_json::json!({
        "spec": {
            "selector": {"matchLabels": selector_labels(vd)},
            // Every agent series gets `delivery` (the VideoDelivery's name) beside the `namespace` and `pod` Prometheus
            // adds, so one Prometheus can tell many VideoDeliveries apart; the agent itself serves only one.
            "podMetricsEndpoints": [{
                "port": "admin",
                "path": "/metrics",
                "interval": pm.interval,
                "relabelings": [{
                    "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                    "targetLabel": "delivery",
                }],
            }],
        }
    });
    Some(obj)
}

/// The autoscaler, when the spec asks for one.
pub fn hpa(vd: &VideoDelivery) -> Option<HorizontalPodAutoscaler> {
    let a = vd.spec.agents.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: meta(vd, agent_name(vd)),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: agent_name(vd),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(a.target_cpu_utilization),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A disruption budget when more than one agent runs, so a node drain never takes them all at once.
pub fn pdb(vd: &VideoDelivery) -> Option<PodDisruptionBudget> {
    let most = match &vd.spec.agents.autoscaling {
        Some(a) => a.min_replicas,
        None => vd.spec.fixed_replicas().unwrap_or(0),
    };
    (most > 1).then(|| PodDisruptionBudget {
        metadata: meta(vd, agent_name(vd)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(vd)), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AutoscalingSpec, VideoDeliverySpec};

    fn vd(yaml: &str) -> VideoDelivery {
        let spec: VideoDeliverySpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut vd = VideoDelivery::new("media", spec);
        vd.metadata.namespace = Some("web".into());
        vd.metadata.uid = Some("uid-1".into());
        vd
    }

    #[test]
    fn the_access_log_field_becomes_agent_flags() {
        let on = agent_args(&vd("storage: {url: 's3://v'}"));
        for want in ["--access-log=true", "--access-log-format=json", "--access-log-sample=1"] {
            assert!(on.contains(&want.to_string()), "{want} in {on:?}");
        }
        let off = agent_args(&vd("storage: {url: 's3://v'}\nagents: {accessLog: {enabled: false}}"));
        assert!(off.contains(&"--access-log=false".to_string()), "{off:?}");
        let sampled =
            agent_args(&vd("storage: {url: 's3://v'}\nagents: {accessLog: {format: text, sampleRatio: 0.05}}"));
        assert!(sampled.contains(&"--access-log-format=text".to_string()), "{sampled:?}");
        assert!(sampled.contains(&"--access-log-sample=0.05".to_string()), "{sampled:?}");
    }

    #[test]
    fn the_deployment_mounts_the_keyring_and_runs_locked_down() {
        let vd = vd(
            "storage: {url: 's3://videos/prod', endpoint: 'http://minio:9000', pathStyle: true, credentialsSecretRef: {name: s3}}",
        );
        let d = deployment(&vd, "agent:1", SecretVersions { credentials: Some("42") });
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let args = c.args.as_ref().unwrap();
        assert!(args.contains(&"--storage=s3://videos/prod".to_string()));
        assert!(args.contains(&"--keyring=/etc/videodelivery/keyring/keyring.json".to_string()));
        assert!(args.contains(&"--s3-path-style".to_string()));
        assert!(args.contains(&"--stream-memory-mib=128".to_string()), "slice memory is bounded: {args:?}");
        assert!(args.contains(&"--shutdown-delay=5s".to_string()));
        assert_eq!(pod.termination_grace_period_seconds, Some(40), "delay + grace + exit");
        assert!(c.env.is_none(), "no key ever travels in an environment variable");
        assert_eq!(c.env_from.as_ref().unwrap()[0].secret_ref.as_ref().unwrap().name, "s3");
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(c.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
        assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true));
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
        assert_eq!(d.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
    }

    #[test]
    fn config_hash_follows_config_and_credentials_not_keys() {
        let a = vd("storage: {url: 's3://videos'}");
        let mut b = a.clone();
        b.spec.agents.cache_control = "public, max-age=60".into();
        assert_ne!(config_hash(&a, "i", SecretVersions::default()), config_hash(&b, "i", SecretVersions::default()));
        assert_ne!(
            config_hash(&a, "i", SecretVersions { credentials: Some("1") }),
            config_hash(&a, "i", SecretVersions { credentials: Some("2") })
        );
        assert_eq!(
            config_hash(&a, "i", SecretVersions { credentials: Some("1") }),
            config_hash(&a.clone(), "i", SecretVersions { credentials: Some("1") })
        );
    }

    #[test]
    fn autoscaling_makes_an_hpa_and_leaves_replicas_to_it() {
        let mut v = vd("storage: {url: 's3://videos'}");
        assert!(hpa(&v).is_none());
        assert!(pdb(&v).is_some(), "two replicas by default get a PDB");
        v.spec.agents.autoscaling =
            Some(AutoscalingSpec { min_replicas: 1, max_replicas: 5, target_cpu_utilization: 60 });
        assert_eq!(hpa(&v).unwrap().spec.unwrap().max_replicas, 5);
        assert_eq!(deployment(&v, "i", SecretVersions::default()).spec.unwrap().replicas, None);
        assert!(pdb(&v).is_none(), "one minimum replica: no PDB");
        let v = vd("storage: {url: 'file:///media', volumeClaimName: films}\nagents: {replicas: 1}");
        let pod = deployment(&v, "i", SecretVersions::default()).spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.volumes.unwrap()[1].persistent_volume_claim.as_ref().unwrap().claim_name, "films");
        assert!(pdb(&v).is_none());
    }

    #[test]
    fn url_names_the_service() {
        assert_eq!(url(&vd("storage: {url: 's3://v'}")), "http://media-agent.web.svc/videos/");
        assert_eq!(
            url(&vd("storage: {url: 's3://v'}\nservice: {port: 8080}")),
            "http://media-agent.web.svc:8080/videos/"
        );
    }

    #[test]
    fn trusted_proxies_reach_the_agent_and_roll_it() {
        let a = vd("storage: {url: 's3://videos'}");
        assert!(!agent_args(&a).iter().any(|x| x.starts_with("--trusted-proxy")));
        let b = vd("storage: {url: 's3://videos'}\nagents: {trustedProxies: [10.0.0.0/8, 192.0.2.10, '2001:db8::1']}");
        let args = agent_args(&b);
        let proxies: Vec<&str> = args.iter().filter_map(|x| x.strip_prefix("--trusted-proxy=")).collect();
        assert_eq!(proxies, ["10.0.0.0/8", "192.0.2.10/32", "2001:db8::1/128"], "the agent takes CIDRs only");
        assert_ne!(
            config_hash(&a, "i", SecretVersions::default()),
            config_hash(&b, "i", SecretVersions::default()),
            "a new proxy list rolls the agents"
        );
    }

    #[test]
    fn scheduling_reaches_the_pod_template() {
        let v = vd(r#"
storage: {url: 's3://videos'}
agents:
  nodeSelector: {pool: video}
  tolerations: [{key: dedicated, operator: Equal, value: video, effect: NoSchedule}]
  affinity: {podAntiAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 100, podAffinityTerm: {topologyKey: kubernetes.io/hostname}}]}}
  topologySpreadConstraints:
    - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}
    - {maxSkew: 2, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {tier: video}}}
  priorityClassName: video-critical
  imagePullSecrets: [{name: registry}]
"#);
        let pod = deployment(&v, "i", SecretVersions::default()).spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["pool"], "video");
        assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("dedicated"));
        assert!(pod.affinity.unwrap().pod_anti_affinity.is_some());
        assert_eq!(pod.priority_class_name.as_deref(), Some("video-critical"));
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "registry");
        let spread = pod.topology_spread_constraints.unwrap();
        let selectors: Vec<_> =
            spread.iter().map(|c| c.label_selector.clone().unwrap().match_labels.unwrap()).collect();
        assert_eq!(selectors[0], selector_labels(&v), "an empty selector spreads this VideoDelivery's agents");
        assert_eq!(selectors[1], BTreeMap::from([("tier".to_string(), "video".to_string())]), "a given one is kept");
        // Without scheduling fields the pod template has none of them.
        let pod = deployment(&vd("storage: {url: 's3://v'}"), "i", SecretVersions::default())
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert!(pod.node_selector.is_none() && pod.tolerations.is_none() && pod.affinity.is_none());
        assert!(pod.topology_spread_constraints.is_none() && pod.image_pull_secrets.is_none());
        assert!(pod.priority_class_name.is_none());
    }

    #[test]
    fn the_network_policy_opens_video_to_its_peers_and_metrics_to_monitoring() {
        let port_names = |rule: &NetworkPolicyIngressRule| -> Vec<String> {
            rule.ports
                .iter()
                .flatten()
                .filter_map(|p| match &p.port {
                    Some(IntOrString::String(name)) => Some(name.clone()),
                    _ => None,
                })
                .collect()
        };
        for (agents, from_anyone, metrics_rule) in [
            ("{}", None, None),
            ("{networkPolicy: {enabled: false, from: [{podSelector: {}}]}}", None, None),
            ("{networkPolicy: {enabled: true}}", Some(true), Some(false)),
            (
                "{networkPolicy: {enabled: true, from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress}}}], \
                 metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]}}",
                Some(false),
                Some(true),
            ),
        ] {
            let v = vd(&format!("storage: {{url: 's3://videos'}}\nagents: {agents}"));
            let Some(np) = network_policy(&v) else {
                assert!(from_anyone.is_none(), "{agents}: no policy");
                continue;
            };
            assert_eq!(np.metadata.name.as_deref(), Some("media-agent"));
            assert_eq!(np.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
            let spec = np.spec.unwrap();
            assert_eq!(spec.pod_selector.unwrap().match_labels.unwrap(), selector_labels(&v));
            assert_eq!(spec.policy_types.unwrap(), ["Ingress"], "egress to storage stays open");
            let ingress = spec.ingress.unwrap();
            assert_eq!(port_names(&ingress[0]), ["http"]);
            assert_eq!(ingress[0].from.is_none(), from_anyone.unwrap(), "{agents}");
            assert_eq!(ingress.len() == 2, metrics_rule.unwrap(), "{agents}");
            if let Some(m) = ingress.get(1) {
                assert_eq!(port_names(m), ["admin"]);
                assert_eq!(m.from.as_ref().unwrap().len(), 1);
            }
            assert!(
                !ingress.iter().any(|r| port_names(r).contains(&"admin".into()) && r.from.is_none()),
                "the admin port is never open to anyone"
            );
        }
    }

    #[test]
    fn the_pod_monitor_scrapes_the_admin_port() {
        assert!(pod_monitor(&vd("storage: {url: 's3://v'}")).is_none());
        assert!(
            pod_monitor(&vd("storage: {url: 's3://v'}\nagents: {metrics: {podMonitor: {enabled: false}}}")).is_none()
        );
        let v =
            vd("storage: {url: 's3://v'}\nagents: {metrics: {podMonitor: {enabled: true, labels: {release: kps}}}}");
        let pm = pod_monitor(&v).unwrap();
        let json = serde_json::to_value(&pm).unwrap();
        assert_eq!(json["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(json["kind"], "PodMonitor");
        assert_eq!(json["metadata"]["name"], "media-agent");
        assert_eq!(json["metadata"]["namespace"], "web");
        assert_eq!(json["metadata"]["labels"]["release"], "kps");
        assert_eq!(json["metadata"]["labels"]["app.kubernetes.io/managed-by"], "videodelivery-operator");
        assert_eq!(json["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(json["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"], "media");
        let relabel = &json["spec"]["podMetricsEndpoints"][0]["relabelings"][0];
        assert_eq!(relabel["sourceLabels"][0], "__meta_kubernetes_pod_label_app_kubernetes_io_instance");
        assert_eq!(relabel["targetLabel"], "delivery", "agent series carry the VideoDelivery's name");
        let endpoint = &json["spec"]["podMetricsEndpoints"][0];
        assert_eq!(
            (&endpoint["port"], &endpoint["path"], &endpoint["interval"]),
            (&"admin".into(), &"/metrics".into(), &"30s".into())
        );
        // The port name is the container's.
        let c = &deployment(&v, "i", SecretVersions::default()).spec.unwrap().template.spec.unwrap().containers[0];
        let admin = c.ports.as_ref().unwrap().iter().find(|p| p.name.as_deref() == Some("admin")).unwrap();
        assert_eq!(admin.container_port, ADMIN_PORT);
    }

    #[test]
    fn tls_mounts_the_secret_passes_the_flags_and_serves_https() {
        let plain = vd("storage: {url: 's3://v'}");
        let v = vd("storage: {url: 's3://v'}\ntls: {secretName: media-tls}\nservice: {port: 443}");
        let args = agent_args(&v);
        assert!(args.contains(&"--tls-cert=/etc/videodelivery/tls/tls.crt".to_string()), "{args:?}");
        assert!(args.contains(&"--tls-key=/etc/videodelivery/tls/tls.key".to_string()), "{args:?}");
        assert!(!agent_args(&plain).iter().any(|a| a.starts_with("--tls")));
        let pod = deployment(&v, "i", SecretVersions::default()).spec.unwrap().template.spec.unwrap();
        let volume = pod.volumes.unwrap().into_iter().find(|v| v.name == "tls").unwrap();
        assert_eq!(volume.secret.unwrap().secret_name.as_deref(), Some("media-tls"));
        let mount = pod.containers[0].volume_mounts.clone().unwrap().into_iter().find(|m| m.name == "tls").unwrap();
        assert_eq!((mount.mount_path.as_str(), mount.read_only), (TLS_MOUNT, Some(true)));
        assert_eq!(pod.containers[0].ports.as_ref().unwrap()[0].name.as_deref(), Some("https"));
        let port = service(&v).spec.unwrap().ports.unwrap().remove(0);
        assert_eq!((port.name.as_deref(), port.app_protocol.as_deref()), (Some("https"), Some("https")));
        assert_eq!(port.target_port, Some(IntOrString::String("https".into())));
        assert_eq!(url(&v), "https://media-agent.web.svc/videos/");
        // Turning TLS on changes the agents' flags, so they roll; a renewed certificate (same Secret) does not.
        assert_ne!(
            config_hash(&v, "i", SecretVersions::default()),
            config_hash(&plain, "i", SecretVersions::default())
        );
    }

    #[test]
    fn a_disk_cache_is_an_empty_dir_of_its_size_with_the_flags_and_rolls_the_agents() {
        let plain = vd("storage: {url: 's3://v'}");
        assert!(!agent_args(&plain).iter().any(|a| a.starts_with("--disk-cache")));
        let pod = deployment(&plain, "i", SecretVersions::default()).spec.unwrap().template.spec.unwrap();
        assert!(!pod.volumes.unwrap().iter().any(|v| v.name == "disk-cache"));

        let v = vd("storage: {url: 's3://v'}\nagents: {diskCache: {sizeMiB: 10240}}");
        let args = agent_args(&v);
        assert!(args.contains(&format!("--disk-cache-dir={DISK_CACHE_MOUNT}")), "{args:?}");
        // 31/32 of the volume: the kubelet counts the directory's own blocks too.
        assert!(args.contains(&"--disk-cache-size-mib=9920".to_string()), "{args:?}");
        let pod = deployment(&v, "i", SecretVersions::default()).spec.unwrap().template.spec.unwrap();
        let volume = pod.volumes.unwrap().into_iter().find(|v| v.name == "disk-cache").unwrap();
        let dir = volume.empty_dir.unwrap();
        assert_eq!((dir.size_limit, dir.medium), (Some(Quantity("10240Mi".into())), None));
        let mount = pod.containers[0].volume_mounts.clone().unwrap().into_iter().find(|m| m.name == "disk-cache");
        let mount = mount.unwrap();
        assert_eq!((mount.mount_path.as_str(), mount.read_only), (DISK_CACHE_MOUNT, None));
        assert_ne!(
            config_hash(&v, "i", SecretVersions::default()),
            config_hash(&plain, "i", SecretVersions::default())
        );
        let tiny = vd("storage: {url: 's3://v'}\nagents: {diskCache: {sizeMiB: 1}}");
        assert!(agent_args(&tiny).contains(&"--disk-cache-size-mib=1".to_string()));
    }

    #[test]
    fn expose_gateway_makes_an_http_route_to_the_service() {
        assert!(http_route(&vd("storage: {url: 's3://v'}")).is_none());
        let v = vd("storage: {url: 's3://v'}\nagents: {routePrefix: /media/}\n\
                    expose: {gateway: {parentRefs: [{name: public, namespace: gw, sectionName: https}, {name: b}], \
                    hostnames: [video.example.com, cdn.example.com]}}");
        assert!(ingress(&v).is_none());
        let json = serde_json::to_value(http_route(&v).unwrap()).unwrap();
        assert_eq!(json["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(json["kind"], "HTTPRoute");
        assert_eq!(json["metadata"]["name"], "media");
        assert_eq!(json["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(
            json["spec"]["parentRefs"],
            serde_json::json!([{"name": "public", "namespace": "gw", "sectionName": "https"}, {"name": "b"}])
        );
        assert_eq!(json["spec"]["hostnames"], serde_json::json!(["video.example.com", "cdn.example.com"]));
        let rule = &json["spec"]["rules"][0];
        assert_eq!(rule["matches"][0]["path"], serde_json::json!({"type": "PathPrefix", "value": "/media"}));
        assert_eq!(rule["backendRefs"][0], serde_json::json!({"name": "media-agent", "port": 80}));
        assert_eq!(public_url(&v, true).as_deref(), Some("https://video.example.com/media/"));
        assert_eq!(public_url(&v, false).as_deref(), Some("http://video.example.com/media/"));
    }

    #[test]
    fn expose_ingress_makes_an_ingress_with_tls_and_annotations() {
        let v = vd("storage: {url: 's3://v'}\nagents: {routePrefix: /}\nservice: {port: 8443}\n\
                    expose: {ingress: {className: nginx, host: video.example.com, tlsSecretName: video-tls, \
                    annotations: {cert-manager.io/cluster-issuer: letsencrypt}}}");
        assert!(http_route(&v).is_none());
        let i = ingress(&v).unwrap();
        assert_eq!(i.metadata.name.as_deref(), Some("media"));
        assert_eq!(i.metadata.annotations.as_ref().unwrap()["cert-manager.io/cluster-issuer"], "letsencrypt");
        let spec = i.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let tls = &spec.tls.unwrap()[0];
        assert_eq!(
            (tls.hosts.clone().unwrap(), tls.secret_name.as_deref()),
            (vec!["video.example.com".to_string()], Some("video-tls"))
        );
        let rule = &spec.rules.unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("video.example.com"));
        let path = &rule.http.as_ref().unwrap().paths[0];
        assert_eq!((path.path.as_deref(), path.path_type.as_str()), (Some("/"), "Prefix"));
        let backend = path.backend.service.as_ref().unwrap();
        assert_eq!((backend.name.as_str(), backend.port.as_ref().unwrap().number), ("media-agent", Some(8443)));
        assert_eq!(public_url(&v, true).as_deref(), Some("https://video.example.com/"));
        let bare = vd("storage: {url: 's3://v'}\nexpose: {ingress: {host: v.example}}");
        let spec = ingress(&bare).unwrap().spec.unwrap();
        assert!(spec.tls.is_none() && spec.ingress_class_name.is_none());
    }
}
