//! The `VideoDelivery` resource. The CRD under `crds/` is generated from these types by `crdgen`; rules that a
//! plain bound cannot say are CEL rules, so `kubectl apply` refuses nonsense before the operator ever sees it.

// clippy reads the repeated `type_ = ...` of the printcolumn arguments below as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use vd_token::PathError;
use vd_token::rotation::RotationPolicy;

/// Annotation on a VideoDelivery that asks for a rotation now; any new value asks again (`vdctl request-rotation`).
pub const ROTATE_ANNOTATION: &str = "videodelivery.dev/rotate";

/// A Go-style duration the API server's CEL `duration()` understands and humantime parses: "168h", "2m", "1h30m".
const DURATION_PATTERN: &str = vd_token::duration::PATTERN;

/// Longest VideoDelivery name: the agents' Service is `{name}-agent`, a DNS-1035 label of at most 63 characters.
pub const MAX_NAME_LEN: usize = 57;
const NAME_RULE: &str = "self.metadata.name.size() <= 57 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
const NAME_MESSAGE: &str = "metadata.name must be at most 57 lowercase letters, digits or '-', start with a letter and \
    end with a letter or digit (no '.'): the agents' Service is named {name}-agent, a DNS label of at most 63 characters";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "videodelivery.dev",
    version = "v1alpha1",
    kind = "VideoDelivery",
    namespaced,
    shortname = "vd",
    status = "VideoDeliveryStatus",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Active Key", type_ = "string", json_path = ".status.activeKeyId"),
    printcolumn(name = "Agents", type_ = "integer", json_path = ".status.readyAgents"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desiredAgents"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(NAME_RULE).message(NAME_MESSAGE)
)]
#[serde(rename_all = "camelCase")]
/// Private video served from object storage by a fleet of agents that check signed URLs.
pub struct VideoDeliverySpec {
    pub storage: StorageSpec,
    #[serde(default)]
    pub signing: SigningSpec,
    #[serde(default)]
    pub agents: AgentsSpec,
    #[serde(default)]
    pub service: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<ExposeSpec>,
}

/// The agents serve HTTPS themselves, with the certificate of a `kubernetes.io/tls` Secret in this namespace
/// (cert-manager's Certificate makes one), mounted read-only; the Service port then speaks https.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret of type `kubernetes.io/tls` (keys `tls.crt` and `tls.key`). Changing it rolls the agents.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN_RULE).message(
        "tls.secretName must be the name of a Secret: lowercase letters, digits, '-' and '.', starting and ending \
         with a letter or digit"
    ))]
    pub secret_name: String,
}

/// How viewers reach the agents from outside the cluster: exactly one of `gateway` (a Gateway API HTTPRoute) or
/// `ingress` (a networking.k8s.io Ingress), named after the VideoDelivery and routing `agents.routePrefix` to the
/// agents' Service. Removing it, or switching, deletes what the operator made.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.gateway) != has(self.ingress)")
    .message("set exactly one of expose.gateway (a Gateway API HTTPRoute) or expose.ingress (an Ingress), not both \
              and not neither; leave expose out to keep the agents inside the cluster"))]
pub struct ExposeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayExpose>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressExpose>,
}

/// An HTTPRoute (gateway.networking.k8s.io/v1) attached to existing Gateways. Needs the Gateway API CRDs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.parentRefs) > 0")
    .message("expose.gateway.parentRefs must name at least one Gateway, like [{name: public, namespace: gateways}]"))]
#[x_kube(validation = Rule::new("size(self.hostnames) > 0")
    .message("expose.gateway.hostnames must list at least one host name viewers use, like [video.example.com]"))]
pub struct GatewayExpose {
    /// The Gateways (and optionally their listeners) the route attaches to.
    #[schemars(length(max = 32))]
    pub parent_refs: Vec<GatewayParentRef>,
    /// Host names the route answers for; the first one is the public URL in status.
    #[schemars(length(max = 16), inner(length(max = 253)), transform = hostname_items)]
    pub hostnames: Vec<String>,
}

/// A Gateway by name; its namespace defaults to the VideoDelivery's (the Gateway must allow routes from there).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParentRef {
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN_RULE).message(
        "expose.gateway.parentRefs name must be the name of a Gateway: lowercase letters, digits, '-' and '.'"
    ))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(DNS_LABEL_RULE).message(
        "expose.gateway.parentRefs namespace must be the name of a namespace: lowercase letters, digits and '-'"
    ))]
    pub namespace: Option<String>,
    /// A listener of the Gateway, by name; all listeners that allow the route when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN_RULE).message(
        "expose.gateway.parentRefs sectionName must be a listener name: lowercase letters, digits, '-' and '.'"
    ))]
    pub section_name: Option<String>,
}

/// An Ingress (networking.k8s.io/v1) for the ingress controller of `className`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IngressExpose {
    /// The IngressClass; the cluster's default class when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN_RULE).message(
        "expose.ingress.className must be the name of an IngressClass: lowercase letters, digits, '-' and '.'"
    ))]
    pub class_name: Option<String>,
    /// The host name viewers use, like video.example.com.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(HOSTNAME_RULE).message(
        "expose.ingress.host must be a host name like video.example.com: lowercase letters, digits, '-' and '.', \
         no wildcard, port, scheme or IP address"
    ))]
    pub host: String,
    /// A `kubernetes.io/tls` Secret with the certificate for `host`, which the ingress controller serves (made by
    /// cert-manager when an issuer annotation is given). Without it the public URL is http.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN_RULE).message(
        "expose.ingress.tlsSecretName must be the name of a Secret: lowercase letters, digits, '-' and '.'"
    ))]
    pub tls_secret_name: Option<String>,
    /// Annotations for the Ingress, passed through (e.g. `cert-manager.io/cluster-issuer: letsencrypt`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new(annotation_keys_rule())
        .message(kube::core::Message::Message(format!("each expose.ingress.annotations key must be {QUALIFIED_NAME_FORM}"))))]
    pub annotations: BTreeMap<String, String>,
}

/// CEL: a DNS label (namespace names).
const DNS_LABEL_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";

/// CEL: a host name viewers type: a lowercase DNS name, not an IP address (Ingress and HTTPRoute refuse those),
/// without a wildcard, whose host would be no URL.
const HOSTNAME_RULE: &str =
    "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$') && !isIP(self)";

fn hostname_items(schema: &mut schemars::Schema) {
    items_rule(
        schema,
        HOSTNAME_RULE,
        "each expose.gateway.hostnames entry must be a host name like video.example.com: lowercase letters, digits, \
         '-' and '.', no wildcard, port, scheme or IP address",
    );
}

/// Where the videos are.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.url.matches('^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file:///.+)$')"
).message("storage.url must be s3://bucket[/prefix] or file:///absolute/dir"))]
#[x_kube(validation = Rule::new("!self.url.startsWith('file://') || has(self.volumeClaimName)")
    .message("a file:// storage needs volumeClaimName: the PersistentVolumeClaim that holds the files"))]
#[x_kube(validation = Rule::new("!self.url.startsWith('s3://') || !has(self.volumeClaimName)")
    .message("storage.volumeClaimName is only for a file:// storage: an s3:// storage mounts no volume"))]
// On the object, not the field: a refusal of a field shows its value, and an endpoint may hold credentials.
#[x_kube(validation = Rule::new(ENDPOINT_RULE).message(ENDPOINT_MESSAGE).field_path(".endpoint"))]
#[x_kube(validation = Rule::new(FILE_PATH_RULE).message(FILE_PATH_MESSAGE).field_path(".url"))]
#[x_kube(validation = Rule::new(file_mount_rule())
    .message(kube::core::Message::Message(file_mount_message()))
    .field_path(".url"))]
pub struct StorageSpec {
    /// `s3://bucket[/prefix]` or `file:///dir` (a directory on the volume named by `volumeClaimName`, mounted at
    /// that path: canonical, and clear of the directories the agent itself needs).
    #[schemars(length(min = 1, max = 1024))]
    pub url: String,
    /// S3 endpoint for stores other than AWS (MinIO, Cloudflare R2, GCS's S3 interface):
    /// `http(s)://host[:port][/path]`, without credentials (they belong in `credentialsSecretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,
    /// Path-style requests (http://host/bucket/key), which most self-hosted stores need.
    #[serde(default)]
    pub path_style: bool,
    /// A Secret in the same namespace whose keys become the agents' environment: `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN` if used). Without it, agents use the pod's own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// The PersistentVolumeClaim mounted read-only at the `file://` directory; required with `file://`, refused
    /// with `s3://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN_RULE).message(
        "storage.volumeClaimName must be the name of a PersistentVolumeClaim: lowercase letters, digits, '-' and '.', \
         starting and ending with a letter or digit"
    ))]
    pub volume_claim_name: Option<String>,
}

/// CEL: a DNS subdomain name, the form of most object names (`volumeClaimName`, Secret names).
const DNS_SUBDOMAIN_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";

/// CEL: a `file://` URL names its directory canonically, since it is also the mount path: absolute, without empty,
/// `.` or `..` segments, trailing `/`, or characters a path on a volume rarely needs.
const FILE_PATH_RULE: &str = "!self.url.startsWith('file://') || (self.url.matches('^file://(/[-A-Za-z0-9._~@+=]+)+$') \
    && !self.url.matches('/[.][.]?(/|$)'))";
const FILE_PATH_MESSAGE: &str = "storage.url file:///dir must be a canonical absolute path: segments of letters, digits \
    and -._~@+=, with no empty ('//'), '.' or '..' segment and no trailing '/'";

/// Directories of the agent's container that the `file://` volume must neither cover nor lie in: the keyring
/// mount, the image's system directories (the binary and its libraries), the kernel's, and scratch space.
pub const AGENT_RESERVED_PATHS: [&str; 13] = [
    crate::resources::KEYRING_MOUNT,
    "/bin",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/tmp",
    "/usr",
    "/var/run",
];

fn file_mount_rule() -> String {
    let reserved: Vec<String> = AGENT_RESERVED_PATHS.iter().map(|p| format!("'{p}'")).collect();
    format!(
        "!self.url.startsWith('file://') || ![{}].exists(m, self.url.substring(7) == m || \
         self.url.substring(7).startsWith(m + '/') || m.startsWith(self.url.substring(7) + '/'))",
        reserved.join(", ")
    )
}

fn file_mount_message() -> String {
    format!(
        "storage.url file:///dir is where the volume is mounted in the agent: it must not be, contain or lie in {} \
         (the keyring, the agent's binary and libraries, system and scratch directories); /media or /srv/videos are fine",
        AGENT_RESERVED_PATHS.join(", ")
    )
}

/// An optional `:port` in a CEL regex: 0 to 65535, so a typo like `:90000` is refused where it is written, not
/// when the agent or a browser fails on it.
macro_rules! port_re {
    () => {
        "(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
    };
}

/// CEL: an S3 endpoint is an absolute http(s) URL, without userinfo (a place to leak credentials), query or
/// fragment, which the S3 client would mangle.
const ENDPOINT_RULE: &str = concat!(
    "!has(self.endpoint) || self.endpoint.matches('^https?://(\\\\[[0-9A-Fa-f:.]+\\\\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?)",
    port_re!(),
    "(/[-A-Za-z0-9._~%/]*)?$')"
);
const ENDPOINT_MESSAGE: &str = "storage.endpoint must be a URL like https://host[:port][/path], without user, query, \
    fragment or spaces (credentials belong in credentialsSecretRef)";

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Key rotation timings, as Go durations ("168h", "2m", "30s").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "duration(self.rotationInterval) > duration(self.propagationDelay) + duration(self.maxTokenLifetime) + duration(self.clockSkew)"
).message("signing.rotationInterval must be longer than propagationDelay + maxTokenLifetime + clockSkew, so that at most one old key is still accepted"))]
pub struct SigningSpec {
    /// How long a key signs before the next one takes over.
    #[serde(default = "default_rotation_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub rotation_interval: String,
    /// How long a new key is published (agents accept it) before backends sign with it. Mounted Secrets take up
    /// to a minute or more to reach a pod.
    #[serde(default = "default_propagation_delay")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub propagation_delay: String,
    /// Longest token lifetime the agents accept.
    #[serde(default = "default_max_token_lifetime")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub max_token_lifetime: String,
    /// Clock difference tolerated between backends and agents.
    #[serde(default = "default_clock_skew")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub clock_skew: String,
}

fn default_rotation_interval() -> String {
    "168h".into()
}
fn default_propagation_delay() -> String {
    "2m".into()
}
fn default_max_token_lifetime() -> String {
    "24h".into()
}
fn default_clock_skew() -> String {
    "30s".into()
}

impl Default for SigningSpec {
    fn default() -> Self {
        SigningSpec {
            rotation_interval: default_rotation_interval(),
            propagation_delay: default_propagation_delay(),
            max_token_lifetime: default_max_token_lifetime(),
            clock_skew: default_clock_skew(),
        }
    }
}

/// A spec the API server let through but the operator cannot honour (only possible if the CRD's rules were bypassed).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("signing.{field} is not a duration like \"168h\", \"2m\" or \"30s\"")]
    Duration { field: &'static str },
    #[error("signing.{field} is below the operator's floor of {floor}")]
    BelowFloor { field: &'static str, floor: String },
    #[error("signing: {0}")]
    Rotation(#[from] vd_token::rotation::RotationError),
    #[error("storage.url must be s3://bucket[/prefix] or file:///absolute/dir")]
    StorageUrl,
    #[error("a file:// storage needs volumeClaimName")]
    VolumeClaimMissing,
    #[error("agents: set replicas or autoscaling, not both")]
    ReplicasAndAutoscaling,
    #[error("agents.autoscaling.minReplicas ({min}) is above maxReplicas ({max})")]
    MinAboveMax { min: i32, max: i32 },
    #[error(
        "agents.publicPrefixes entry {prefix:?} {problem}: each entry must be a folder under routePrefix, ending in '/', \
         like {example}"
    )]
    PublicPrefix { prefix: String, problem: String, example: String },
    #[error(
        "metadata.name {name:?} must be at most 57 lowercase letters, digits or '-', start with a letter and end with a \
         letter or digit: the agents' Service is named {{name}}-agent, a DNS label of at most 63 characters"
    )]
    Name { name: String },
    #[error("agents.image must not be empty or hold spaces; leave it out for the operator's default")]
    Image,
    #[error("agents.resources.{field}.{resource} is not a quantity like 100m, 0.5, 64Mi or 1Gi, or is negative")]
    Quantity { field: &'static str, resource: String },
    #[error("agents.resources: the {resource} request ({request}) is above its limit ({limit})")]
    RequestAboveLimit { resource: String, request: String, limit: String },
    #[error("service.annotations key {key:?} is not a qualified name like example.com/name or name")]
    AnnotationKey { key: String },
    #[error("storage.url {url:?} {problem}")]
    StoragePath { url: String, problem: String },
    #[error("storage.volumeClaimName is only for a file:// storage: an s3:// storage mounts no volume")]
    VolumeClaimBesideS3,
    #[error("storage.volumeClaimName {name:?} is not the name of a PersistentVolumeClaim")]
    VolumeClaimName { name: String },
    #[error("agents.routePrefix {prefix:?} must be a canonical path like /videos: no empty, '.' or '..' segment")]
    RoutePrefix { prefix: String },
    #[error("agents.{field} must be one line without control characters (it is sent as a header)")]
    HeaderValue { field: &'static str },
    // The endpoint is not repeated: it may hold credentials.
    #[error("storage.endpoint must be a URL like https://host[:port][/path], without user, query, fragment or spaces")]
    Endpoint,
    #[error("agents.corsOrigins entry {origin:?} must be * or an origin like https://player.example[:port]")]
    CorsOrigin { origin: String },
    #[error("agents.trustedProxies entry {entry:?} must be a CIDR like 10.0.0.0/8 or an IP address")]
    TrustedProxy { entry: String },
    #[error("agents.priorityClassName {name:?} is not the name of a PriorityClass")]
    PriorityClassName { name: String },
    #[error("agents.metrics.podMonitor.interval must be a duration of at least 1s, like \"30s\"")]
    ScrapeInterval,
    #[error("agents.metrics.podMonitor.labels entry {key:?} is not a valid label")]
    PodMonitorLabel { key: String },
    #[error("tls.secretName {name:?} is not the name of a Secret")]
    TlsSecretName { name: String },
    #[error("expose: {0}")]
    Expose(String),
}

fn duration(field: &'static str, text: &str) -> Result<Duration, SpecError> {
    vd_token::duration::parse_std(text).map_err(|_| SpecError::Duration { field })
}

/// The shortest signing timings the operator accepts. Below them production breaks in ways no condition can
/// repair: a key signed with before kubelet has put it in every agent's volume, or tokens that expire in flight.
/// The same floors are CEL rules in the CRD ([`crd_with_floors`]), so `kubectl apply` refuses what the operator
/// would; the operator's `--min-propagation-delay`, `--min-token-lifetime` and `--min-rotation-interval` (and the
/// chart's `signingFloors`) lower them for tests and labs, never silently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningFloors {
    /// Above kubelet's Secret propagation: its sync period (1 min) plus jitter and cache TTL, up to about 92 s by
    /// default; 68 s was measured on a real node.
    pub propagation_delay: vd_token::duration::GoDuration,
    pub token_lifetime: vd_token::duration::GoDuration,
    pub rotation_interval: vd_token::duration::GoDuration,
}

impl Default for SigningFloors {
    fn default() -> Self {
        use vd_token::duration::GoDuration;
        SigningFloors {
            propagation_delay: GoDuration::from_secs(120),
            token_lifetime: GoDuration::from_secs(60),
            rotation_interval: GoDuration::from_secs(3600),
        }
    }
}

impl SigningFloors {
    /// The floors as CEL rules on `spec.signing`, with the messages `kubectl apply` prints.
    fn rules(&self) -> [(String, String); 3] {
        let (p, t, r) = (self.propagation_delay, self.token_lifetime, self.rotation_interval);
        [
            (
                format!("duration(self.propagationDelay) >= duration('{p}')"),
                format!(
                    "signing.propagationDelay must be at least {p}: kubelet can take a minute and a half to put a new \
                     key in the agents' volume, and backends must not sign with it before (the operator's \
                     --min-propagation-delay sets this floor)"
                ),
            ),
            (
                format!("duration(self.maxTokenLifetime) >= duration('{t}')"),
                format!(
                    "signing.maxTokenLifetime must be at least {t}, or agents refuse tokens that are still in flight \
                     (the operator's --min-token-lifetime sets this floor)"
                ),
            ),
            (
                format!("duration(self.rotationInterval) >= duration('{r}')"),
                format!(
                    "signing.rotationInterval must be at least {r} (the operator's --min-rotation-interval sets this \
                     floor)"
                ),
            ),
        ]
    }

    fn check(&self, policy: &RotationPolicy) -> Result<(), SpecError> {
        let below = [
            ("propagationDelay", policy.propagation_delay, self.propagation_delay),
            ("maxTokenLifetime", policy.max_lifetime, self.token_lifetime),
            ("rotationInterval", policy.rotation_interval, self.rotation_interval),
        ]
        .into_iter()
        .find(|(_, got, floor)| *got < floor.as_secs());
        match below {
            Some((field, _, floor)) => Err(SpecError::BelowFloor { field, floor: floor.to_string() }),
            None => Ok(()),
        }
    }
}

/// The CRD with the signing floors as CEL rules on `spec.signing`; `crdgen` prints it with the default floors.
pub fn crd_with_floors(
    floors: &SigningFloors,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    use kube::CustomResourceExt;
    let mut crd = VideoDelivery::crd();
    let signing = crd
        .spec
        .versions
        .iter_mut()
        .filter_map(|v| v.schema.as_mut()?.open_api_v3_schema.as_mut()?.properties.as_mut()?.get_mut("spec"))
        .filter_map(|spec| spec.properties.as_mut()?.get_mut("signing"));
    for schema in signing {
        let rules = schema.x_kubernetes_validations.get_or_insert_with(Vec::new);
        rules.extend(floors.rules().into_iter().map(|(rule, message)| ValidationRule {
            rule,
            message: Some(message),
            ..Default::default()
        }));
    }
    crd
}

impl SigningSpec {
    /// The rotation timings in seconds, refused if they would break the two-phase rotation.
    pub fn policy(&self) -> Result<RotationPolicy, SpecError> {
        let policy = RotationPolicy {
            rotation_interval: duration("rotationInterval", &self.rotation_interval)?.as_secs(),
            propagation_delay: duration("propagationDelay", &self.propagation_delay)?.as_secs(),
            max_lifetime: duration("maxTokenLifetime", &self.max_token_lifetime)?.as_secs(),
            clock_skew: duration("clockSkew", &self.clock_skew)?.as_secs(),
        };
        policy.validate()?;
        Ok(policy)
    }
}

/// Longest `publicPrefixes` entry: room for a full-length `routePrefix` and a folder below it, and a bound that keeps
/// the CEL rules below within the API server's cost budget.
const PUBLIC_PREFIX_MAX_LEN: usize = 512;

/// CEL, on each `publicPrefixes` entry: a canonical folder (token format §3.1, as `vd_token::check_canonical` with
/// `PathKind::Prefix`), and no comma, which the agent's `--public-prefix` reads as a separator between two prefixes.
const PUBLIC_PREFIX_FORM_RULE: &str = r"self.startsWith('/') && self.endsWith('/') && !self.contains('//') && !self.contains('/./') && !self.contains('/../') && !self.matches('[\\x00-\\x1f\\x7f\\\\,]')";
const PUBLIC_PREFIX_FORM_MESSAGE: &str = "each agents.publicPrefixes entry must be a folder that starts and ends with '/', like \
    /videos/public/ (without the last '/' it would also open /videos/publicity.txt), with no empty ('//'), '.' or '..' \
    segment and no comma, backslash or control character";

/// CEL, on the agents: every `publicPrefixes` entry lies in the folder that `routePrefix` names.
const PUBLIC_PREFIX_UNDER_ROUTE_RULE: &str = "!has(self.publicPrefixes) || self.publicPrefixes.all(p, \
    p.startsWith(self.routePrefix.endsWith('/') ? self.routePrefix : self.routePrefix + '/'))";
const PUBLIC_PREFIX_UNDER_ROUTE_MESSAGE: &str = r#""each agents.publicPrefixes entry must be a folder under routePrefix " + self.routePrefix + ", ending in '/', like " + (self.routePrefix.endsWith('/') ? self.routePrefix : self.routePrefix + '/') + "public/""#;

/// Puts the canonical-folder rule on each `publicPrefixes` entry, so that a refusal names the entry by its index.
fn public_prefix_items(schema: &mut schemars::Schema) {
    let items = schema.get_mut("items").and_then(|v| <&mut schemars::Schema>::try_from(v).ok());
    let items = items.expect("a list schema has an items schema");
    let rule = kube::core::Rule::new(PUBLIC_PREFIX_FORM_RULE).message(PUBLIC_PREFIX_FORM_MESSAGE);
    kube::core::validate(items, rule).expect("a CEL rule serializes");
}

/// The agent fleet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))")
    .message("set agents.replicas or agents.autoscaling, not both"))]
#[x_kube(validation = Rule::new(PUBLIC_PREFIX_UNDER_ROUTE_RULE)
    .message(kube::core::Message::Expression(PUBLIC_PREFIX_UNDER_ROUTE_MESSAGE.into()))
    .field_path(".publicPrefixes"))]
pub struct AgentsSpec {
    /// The agent image; the operator's `--agent-image` when not set. When set, it must not be empty or hold spaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^[^\\\\s\\\\x00-\\\\x1f\\\\x7f]+$')")
        .message("agents.image must be an image reference like registry.example/videodelivery-agent:1.2, without spaces; \
                  leave it out for the operator's default"))]
    pub image: Option<String>,
    /// A fixed number of agents (2 when neither this nor autoscaling is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Requests and limits of the agent container (defaults: 100m CPU and 64Mi requested, 512Mi limit). Each a
    /// quantity, and no request above the limit of the same resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bound_resources)]
    #[x_kube(validation = Rule::new(QUANTITIES_RULE).message(QUANTITIES_MESSAGE))]
    #[x_kube(validation = Rule::new(REQUESTS_RULE).message(REQUESTS_MESSAGE))]
    pub resources: Option<ResourceRequirements>,
    /// URL path under which objects are served; canonical (no empty, `.` or `..` segment).
    #[serde(default = "default_route_prefix")]
    #[schemars(regex(pattern = "^/[A-Za-z0-9._~/-]*$"), length(max = 256))]
    #[x_kube(validation = Rule::new(ROUTE_PREFIX_RULE).message(ROUTE_PREFIX_MESSAGE))]
    pub route_prefix: String,
    /// Folders served without a token (trailers, thumbnails), under `routePrefix` and ending in `/`, e.g.
    /// `/videos/public/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = PUBLIC_PREFIX_MAX_LEN)), transform = public_prefix_items)]
    pub public_prefixes: Vec<String>,
    /// Cache-Control of successful answers (what a CDN in front may cache); a header value, so no control
    /// characters.
    #[serde(default = "default_cache_control")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new(HEADER_VALUE_RULE).message(
        "agents.cacheControl must be one line without control characters (it is sent as a header)"
    ))]
    pub cache_control: String,
    /// Origins allowed to read answers from scripts (web players on another origin), as browsers send them
    /// (`https://player.example`, lowercase, no path); `*` for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 256)), transform = cors_origin_items)]
    pub cors_origins: Vec<String>,
    /// Load balancers, ingress controllers or CDNs in front of the agents, as CIDRs (`10.0.0.0/8`) or addresses:
    /// the agents believe X-Forwarded-For only from these, so that rate limits and IP-bound tokens see the viewer,
    /// not the proxy. Changing it rolls the agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)), transform = trusted_proxy_items)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub rate_limit: RateLimitSpec,
    #[serde(default)]
    pub cache: CacheSpec,
    #[serde(default, skip_serializing_if = "DiskCacheSpec::is_off")]
    pub disk_cache: DiskCacheSpec,
    #[serde(default)]
    pub playback: PlaybackSpec,
    /// Nodes the agents may run on, by label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the agents tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,
    /// Node and pod (anti-)affinity of the agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the agents spread over zones or nodes. A constraint without `labelSelector` selects the agents of
    /// this VideoDelivery (`app.kubernetes.io/name` and `app.kubernetes.io/instance`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the agents' pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN_RULE).message(
        "agents.priorityClassName must be the name of a PriorityClass: lowercase letters, digits, '-' and '.'"
    ))]
    pub priority_class_name: Option<String>,
    /// Secrets (in this namespace) that hold credentials for pulling `image` from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<AgentNetworkPolicySpec>,
    #[serde(default)]
    pub metrics: MetricsSpec,
    #[serde(default)]
    pub access_log: AccessLogSpec,
}

/// CEL on `resources`: every request and limit is a non-negative quantity.
const QUANTITIES_RULE: &str = "(!has(self.requests) || self.requests.all(k, isQuantity(string(self.requests[k])) && \
    !string(self.requests[k]).startsWith('-'))) && (!has(self.limits) || self.limits.all(k, \
    isQuantity(string(self.limits[k])) && !string(self.limits[k]).startsWith('-')))";
const QUANTITIES_MESSAGE: &str =
    "agents.resources: each request and limit must be a quantity like 100m, 0.5, 64Mi or 1Gi, and not negative";
/// CEL on `resources`: no request above the limit of the same resource (the Deployment would be refused).
const REQUESTS_RULE: &str = "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || \
    !isQuantity(string(self.requests[k])) || !isQuantity(string(self.limits[k])) || \
    quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)";
const REQUESTS_MESSAGE: &str =
    "agents.resources: a request must not be above the limit of the same resource (requests <= limits)";

/// Bounds `requests` and `limits` (8 resources, quantities of 64 characters), which keeps the CEL rules on them
/// within the API server's cost budget.
fn bound_resources(schema: &mut schemars::Schema) {
    for field in ["requests", "limits"] {
        let map = schema.get_mut("properties").and_then(|p| p.get_mut(field)).and_then(|m| m.as_object_mut());
        if let Some(map) = map {
            map.insert("maxProperties".into(), 8.into());
            if let Some(values) = map.get_mut("additionalProperties").and_then(|v| v.as_object_mut()) {
                values.insert("maxLength".into(), 64.into());
            }
        }
    }
}

/// CEL: a route prefix that the agent accepts (`vd_token::canonical_path` once a trailing `/` is dropped).
const ROUTE_PREFIX_RULE: &str =
    "!self.contains('//') && !(self.endsWith('/') ? self : self + '/').matches('/[.][.]?/')";
const ROUTE_PREFIX_MESSAGE: &str = "agents.routePrefix must be a canonical path like /videos: no empty ('//'), '.' or \
    '..' segment (the agents would refuse to start)";

/// CEL: a value sent as an HTTP header holds no control character (CR/LF would make the agent drop it).
const HEADER_VALUE_RULE: &str = "!self.matches('[\\\\x00-\\\\x1f\\\\x7f]')";

/// CEL, on each `corsOrigins` entry: `*` or an origin exactly as a browser sends it in `Origin`, which the agent
/// compares byte for byte.
const CORS_ORIGIN_RULE: &str = concat!(
    "self == '*' || self.matches('^https?://([a-z0-9]([-a-z0-9.]*[a-z0-9])?|\\\\[[0-9a-f:.]+\\\\])",
    port_re!(),
    "$')"
);
const CORS_ORIGIN_MESSAGE: &str = "each agents.corsOrigins entry must be * or an origin as browsers send it: \
    http(s)://host[:port] in lowercase, without path, trailing '/' or comma";

/// CEL, on each `trustedProxies` entry: what the agent's `--trusted-proxy` takes (an address becomes a /32 or /128).
const TRUSTED_PROXY_RULE: &str = "isCIDR(self) || isIP(self)";
const TRUSTED_PROXY_MESSAGE: &str =
    "each agents.trustedProxies entry must be a CIDR like 10.0.0.0/8 or fd00::/8, or an IP address like 192.0.2.10";

fn items_rule(schema: &mut schemars::Schema, rule: &str, message: &str) {
    let items = schema.get_mut("items").and_then(|v| <&mut schemars::Schema>::try_from(v).ok());
    let items = items.expect("a list schema has an items schema");
    kube::core::validate(items, kube::core::Rule::new(rule).message(message)).expect("a CEL rule serializes");
}

fn cors_origin_items(schema: &mut schemars::Schema) {
    items_rule(schema, CORS_ORIGIN_RULE, CORS_ORIGIN_MESSAGE);
}

fn trusted_proxy_items(schema: &mut schemars::Schema) {
    items_rule(schema, TRUSTED_PROXY_RULE, TRUSTED_PROXY_MESSAGE);
}

/// A NetworkPolicy for the agents' pods. It restricts ingress only: storage may be anywhere, so egress stays open.
/// Kubelet's probes come from the node, which network policies always allow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AgentNetworkPolicySpec {
    /// Make the NetworkPolicy (`{name}-agent`).
    #[serde(default)]
    pub enabled: bool,
    /// Who may reach the video port (load balancers, ingress controllers, the backends' pods): these peers, or
    /// anyone when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub from: Vec<NetworkPolicyPeer>,
    /// Who may reach the admin port (/metrics, /healthz, /readyz), e.g. the monitoring namespace
    /// (`namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}`); nobody when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

/// Each agent's access log: one line per request on its stdout (method, path with tokens redacted, status,
/// bytes, time to first byte, duration, cache status, refusal reason, client, user agent, request id).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessLogSpec {
    /// Off writes no line; the metrics are counted either way.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `json` (one object per line, for log collectors) or `text` (one readable line).
    #[serde(default = "default_access_log_format")]
    #[schemars(extend("enum" = ["json", "text"]))]
    pub format: String,
    /// Share of successful requests logged, 0 to 1 (0.1: one in ten); refusals, errors and aborted answers are
    /// always logged.
    #[serde(default = "default_sample_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_ratio: f64,
}

fn default_access_log_format() -> String {
    "json".into()
}
fn default_sample_ratio() -> f64 {
    1.0
}

impl Default for AccessLogSpec {
    fn default() -> Self {
        AccessLogSpec { enabled: true, format: default_access_log_format(), sample_ratio: default_sample_ratio() }
    }
}

/// Scraping of the agents' metrics.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_monitor: Option<PodMonitorSpec>,
}

/// A Prometheus Operator PodMonitor (`monitoring.coreos.com/v1`, `{name}-agent`) for the agents' `/metrics` on
/// their admin port. Needs the Prometheus Operator's CRDs in the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    #[serde(default)]
    pub enabled: bool,
    /// How often Prometheus scrapes each agent, as a Go duration of at least 1s.
    #[serde(default = "default_scrape_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')")
        .message("agents.metrics.podMonitor.interval must be at least 1s"))]
    pub interval: String,
    /// Labels on the PodMonitor, for a Prometheus whose `podMonitorSelector` picks by label (kube-prometheus-stack
    /// selects `release: <its release name>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16), transform = label_values)]
    #[x_kube(validation = Rule::new(labels_rule()).message(LABELS_MESSAGE))]
    pub labels: BTreeMap<String, String>,
}

/// Label values are at most 63 characters; saying so keeps the CEL rule on them within the cost budget.
fn label_values(schema: &mut schemars::Schema) {
    if let Some(values) = schema.get_mut("additionalProperties").and_then(|v| v.as_object_mut()) {
        values.insert("maxLength".into(), 63.into());
    }
}

fn default_scrape_interval() -> String {
    "30s".into()
}

impl Default for PodMonitorSpec {
    fn default() -> Self {
        PodMonitorSpec { enabled: false, interval: default_scrape_interval(), labels: BTreeMap::new() }
    }
}

/// A qualified name (annotation and label keys): an optional DNS subdomain prefix and `/`, then a name.
const QUALIFIED_NAME_REGEX: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
const QUALIFIED_NAME_FORM: &str = "a qualified name like example.com/name or name: an optional DNS prefix of at \
    most 253 characters and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter \
    or digit";

/// CEL on a map of labels: qualified-name keys and label values.
fn labels_rule() -> String {
    format!(
        "self.all(k, k.indexOf('/') <= 253 && k.matches('{QUALIFIED_NAME_REGEX}') && \
         self[k].matches('^([A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?)?$'))"
    )
}
/// CEL on a map of annotations: qualified-name keys (the API server refuses the object otherwise).
fn annotation_keys_rule() -> String {
    format!("self.all(k, k.indexOf('/') <= 253 && k.matches('{QUALIFIED_NAME_REGEX}'))")
}
const LABELS_MESSAGE: &str = "agents.metrics.podMonitor.labels: each key must be a qualified name like example.com/name \
    or name, each value at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";

/// HLS and DASH playback with one token (token format §5.4–§5.6). The path carrier needs no setting.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlaybackSpec {
    /// Rewrite HLS playlists and DASH manifests so every segment URI on the agents' host carries a token derived
    /// from the one on the playlist.
    #[serde(default)]
    pub rewrite_manifests: bool,
    #[serde(default)]
    pub session: SessionSpec,
}

/// The cookie that `{routePrefix}/session` trades for a prefix token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.sameSite != 'None' || self.secureCookie")
    .message("agents.playback.session: sameSite None needs secureCookie (browsers drop such cookies otherwise)"))]
pub struct SessionSpec {
    /// How long a session lasts, whatever the token that opened it; capped at signing.maxTokenLifetime.
    #[serde(default = "default_session_ttl", rename = "ttl")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub ttl: String,
    /// Mark the cookie `Secure` (HTTPS only). Turn off only for plain-HTTP development.
    #[serde(default = "default_true")]
    pub secure_cookie: bool,
    /// `None` lets players on another site send the cookie; `Lax` or `Strict` keep it to the same site.
    #[serde(default = "default_same_site")]
    #[schemars(extend("enum" = ["None", "Lax", "Strict"]))]
    pub same_site: String,
}

fn default_session_ttl() -> String {
    "4h".into()
}
fn default_true() -> bool {
    true
}
fn default_same_site() -> String {
    "None".into()
}

impl Default for SessionSpec {
    fn default() -> Self {
        SessionSpec { ttl: default_session_ttl(), secure_cookie: true, same_site: default_same_site() }
    }
}

/// Each agent's memory for video slices: the cache of hot slices, and what streams hold beyond it. Keep
/// `sizeMiB + streamMiB` (plus about 64 MiB for the process) below the memory limit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Memory for cached slices, in MiB; 0 turns the cache off (a file:// storage is then served from the node's
    /// page cache, ranges of 64 KiB and more with sendfile, on cleartext HTTP/1.1).
    #[serde(default = "default_cache_mib", rename = "sizeMiB")]
    #[schemars(range(min = 0, max = 65536))]
    pub size_mib: u32,
    /// Slice size in KiB: ranges are assembled from aligned slices of this size.
    #[serde(default = "default_slice_kib", rename = "sliceKiB")]
    #[schemars(range(min = 64, max = 65536))]
    pub slice_kib: u32,
    /// Memory for what streams hold beyond the cache (slices it has dropped, read-ahead, uncached chunks), in
    /// MiB. With `sizeMiB` it bounds all slice memory; beyond it, new reads wait and then answer 503.
    #[serde(default = "default_stream_mib", rename = "streamMiB")]
    #[schemars(range(min = 1, max = 65536))]
    pub stream_mib: u32,
}

/// Each agent's disk tier under its memory cache: slices watched spill to an `emptyDir` of this size on the
/// node, so a catalogue larger than memory is read from storage about once. Off by default.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DiskCacheSpec {
    /// The `emptyDir`'s `sizeLimit` in MiB; the agent fills at most 31/32 of it, leaving the rest for the
    /// directory's own blocks. 0 turns the disk tier off. The node needs this much free ephemeral storage.
    #[serde(default, rename = "sizeMiB")]
    #[schemars(range(min = 0, max = 4194304))]
    pub size_mib: u32,
}

impl DiskCacheSpec {
    pub fn is_off(&self) -> bool {
        self.size_mib == 0
    }

    /// What the agent may fill (`--disk-cache-size-mib`): 31/32 of the volume, so the kubelet, which counts the
    /// directory's blocks too, never finds the volume over its limit.
    pub fn agent_mib(&self) -> u32 {
        (self.size_mib - self.size_mib / 32).max(u32::from(self.size_mib > 0))
    }
}

fn default_cache_mib() -> u32 {
    256
}
fn default_stream_mib() -> u32 {
    128
}
fn default_slice_kib() -> u32 {
    1024
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec { size_mib: default_cache_mib(), slice_kib: default_slice_kib(), stream_mib: default_stream_mib() }
    }
}

fn default_route_prefix() -> String {
    "/videos".into()
}
fn default_cache_control() -> String {
    "private, max-age=3600".into()
}

impl Default for AgentsSpec {
    fn default() -> Self {
        AgentsSpec {
            image: None,
            replicas: None,
            autoscaling: None,
            resources: None,
            route_prefix: default_route_prefix(),
            public_prefixes: Vec::new(),
            cache_control: default_cache_control(),
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            rate_limit: RateLimitSpec::default(),
            cache: CacheSpec::default(),
            disk_cache: DiskCacheSpec::default(),
            playback: PlaybackSpec::default(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            topology_spread_constraints: Vec::new(),
            priority_class_name: None,
            image_pull_secrets: Vec::new(),
            network_policy: None,
            metrics: MetricsSpec::default(),
            access_log: AccessLogSpec::default(),
        }
    }
}

impl AgentsSpec {
    /// The CEL rules on the agents' image, resources, route prefix, header values, origins, proxies and names.
    fn check_forms(&self) -> Result<(), SpecError> {
        if self.image.as_deref().is_some_and(|i| i.is_empty() || i.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(SpecError::Image);
        }
        if let Some(r) = &self.resources {
            check_resources(r)?;
        }
        let route = self.route_prefix.strip_suffix('/').unwrap_or(&self.route_prefix);
        if !route.is_empty() && vd_token::check_canonical(route, vd_token::PathKind::Path).is_err()
            || !self.route_prefix.starts_with('/')
        {
            return Err(SpecError::RoutePrefix { prefix: self.route_prefix.clone() });
        }
        if self.cache_control.chars().any(|c| c.is_ascii_control()) {
            return Err(SpecError::HeaderValue { field: "cacheControl" });
        }
        if let Some(o) = self.cors_origins.iter().find(|o| *o != "*" && !forms::origin(o)) {
            return Err(SpecError::CorsOrigin { origin: o.clone() });
        }
        if let Some(p) = self.trusted_proxies.iter().find(|p| forms::ip_net(p).is_none()) {
            return Err(SpecError::TrustedProxy { entry: p.clone() });
        }
        if let Some(name) = self.priority_class_name.as_ref().filter(|n| !forms::dns_subdomain(n)) {
            return Err(SpecError::PriorityClassName { name: name.clone() });
        }
        if let Some(pm) = &self.metrics.pod_monitor {
            if vd_token::duration::parse_std(&pm.interval).map_or(true, |d| d < Duration::from_secs(1)) {
                return Err(SpecError::ScrapeInterval);
            }
            if let Some(key) = pm.labels.iter().find(|(k, v)| !forms::qualified_name(k) || !forms::label_value(v)) {
                return Err(SpecError::PodMonitorLabel { key: key.0.clone() });
            }
        }
        Ok(())
    }

    /// The CEL rules on `publicPrefixes`: each entry a canonical folder, without a comma, under `routePrefix`.
    fn check_public_prefixes(&self) -> Result<(), SpecError> {
        let route = &self.route_prefix;
        let folder = if route.ends_with('/') { route.clone() } else { format!("{route}/") };
        for prefix in &self.public_prefixes {
            let problem = match vd_token::check_canonical(prefix, vd_token::PathKind::Prefix) {
                Err(PathError::NoLeadingSlash) => "does not start with '/'".to_string(),
                Err(PathError::PrefixWithoutSlash) => {
                    format!(
                        "does not end with '/' (it would also open names that only start with it, like {prefix}2.mp4)"
                    )
                }
                Err(PathError::EmptySegment) => "has an empty segment ('//')".to_string(),
                Err(PathError::DotSegment) => "has a '.' or '..' segment".to_string(),
                Err(PathError::ForbiddenCharacter) => "has a control character or a backslash".to_string(),
                Err(other) => other.to_string(),
                Ok(()) if prefix.contains(',') => "has a comma (the agent would read two prefixes)".to_string(),
                Ok(()) if !prefix.starts_with(&folder) => format!("is not under routePrefix {route:?}"),
                Ok(()) => continue,
            };
            return Err(SpecError::PublicPrefix {
                prefix: prefix.clone(),
                problem,
                example: format!("{folder}public/"),
            });
        }
        Ok(())
    }
}

/// The CEL rules on `resources`: quantities, none negative, and requests <= limits.
fn check_resources(r: &ResourceRequirements) -> Result<(), SpecError> {
    let mut values = BTreeMap::new();
    for (field, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (resource, q) in map.iter().flatten() {
            match forms::quantity(&q.0) {
                Some(forms::Amount { negative: false, nanos }) => values.insert((field, resource), nanos),
                _ => return Err(SpecError::Quantity { field, resource: resource.clone() }),
            };
        }
    }
    for (resource, request) in r.requests.iter().flatten() {
        let Some(limit) = r.limits.as_ref().and_then(|l| l.get(resource)) else { continue };
        if values[&("requests", resource)] > values[&("limits", resource)] {
            return Err(SpecError::RequestAboveLimit {
                resource: resource.clone(),
                request: request.0.clone(),
                limit: limit.0.clone(),
            });
        }
    }
    Ok(())
}

/// A HorizontalPodAutoscaler on CPU.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("agents.autoscaling.minReplicas must not be above maxReplicas"))]
pub struct AutoscalingSpec {
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilisation (percent of the request) the autoscaler aims for.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
}

fn one() -> i32 {
    1
}
fn default_cpu_target() -> i32 {
    70
}

/// Per-client-IP request rate limit of each agent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Requests per second per client address; 0 turns the limit off.
    #[serde(default = "default_rps")]
    #[schemars(range(min = 0, max = 1000000))]
    pub requests_per_second: u32,
    /// Requests a client may make at once above the rate.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: u32,
}

fn default_rps() -> u32 {
    50
}
fn default_burst() -> u32 {
    200
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        RateLimitSpec { requests_per_second: default_rps(), burst: default_burst() }
    }
}

/// How the agents are exposed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default = "default_service_type", rename = "type")]
    #[schemars(extend("enum" = ["ClusterIP", "NodePort", "LoadBalancer"]))]
    pub type_: String,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations for the Service (load balancer settings, CDN origin hints); keys are qualified names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new(annotation_keys_rule())
        .message(kube::core::Message::Message(format!("each service.annotations key must be {QUALIFIED_NAME_FORM}"))))]
    pub annotations: BTreeMap<String, String>,
}

fn default_service_type() -> String {
    "ClusterIP".into()
}
fn default_port() -> i32 {
    80
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec { type_: default_service_type(), port: default_port(), annotations: BTreeMap::new() }
    }
}

impl VideoDelivery {
    /// Checks the name and the spec as the CRD does: what [`VideoDeliverySpec::validate`] checks, and a name from
    /// which every owned object's name is valid.
    pub fn validate(&self, floors: &SigningFloors) -> Result<RotationPolicy, SpecError> {
        check_name(&kube::ResourceExt::name_any(self))?;
        self.spec.validate(floors)
    }
}

/// The CRD's rule on `metadata.name`: `{name}-agent` must be a DNS-1035 label (a Service name).
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-';
    if ok { Ok(()) } else { Err(SpecError::Name { name: name.to_string() }) }
}

impl VideoDeliverySpec {
    /// Checks the rules the CRD also enforces, so a spec that bypassed them becomes a condition, not a crash.
    pub fn validate(&self, floors: &SigningFloors) -> Result<RotationPolicy, SpecError> {
        let url = &self.storage.url;
        let s3_ok = url.strip_prefix("s3://").is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
        let file_ok = url.strip_prefix("file:///").is_some_and(|rest| !rest.is_empty());
        if !s3_ok && !file_ok {
            return Err(SpecError::StorageUrl);
        }
        match (&self.storage.volume_claim_name, file_ok) {
            (None, true) => return Err(SpecError::VolumeClaimMissing),
            (Some(_), false) => return Err(SpecError::VolumeClaimBesideS3),
            (Some(name), true) if !forms::dns_subdomain(name) => {
                return Err(SpecError::VolumeClaimName { name: name.clone() });
            }
            _ => {}
        }
        if let Some(dir) = url.strip_prefix("file://")
            && let Some(problem) = forms::mount_path_problem(dir)
        {
            return Err(SpecError::StoragePath { url: url.clone(), problem });
        }
        if self.storage.endpoint.as_deref().is_some_and(|e| !forms::endpoint(e)) {
            return Err(SpecError::Endpoint);
        }
        self.agents.check_forms()?;
        if let Some(key) = self.service.annotations.keys().find(|k| !forms::qualified_name(k)) {
            return Err(SpecError::AnnotationKey { key: key.clone() });
        }
        if self.agents.replicas.is_some() && self.agents.autoscaling.is_some() {
            return Err(SpecError::ReplicasAndAutoscaling);
        }
        if let Some(a) = &self.agents.autoscaling
            && a.min_replicas > a.max_replicas
        {
            return Err(SpecError::MinAboveMax { min: a.min_replicas, max: a.max_replicas });
        }
        self.agents.check_public_prefixes()?;
        if let Some(name) = self.tls.as_ref().map(|t| &t.secret_name).filter(|n| !forms::dns_subdomain(n)) {
            return Err(SpecError::TlsSecretName { name: name.clone() });
        }
        if let Some(e) = &self.expose {
            e.check().map_err(SpecError::Expose)?;
        }
        let policy = self.signing.policy()?;
        floors.check(&policy)?;
        Ok(policy)
    }

    /// Agents wanted now (for an autoscaled fleet, its minimum until the autoscaler says more).
    pub fn fixed_replicas(&self) -> Option<i32> {
        match &self.agents.autoscaling {
            Some(_) => None,
            None => Some(self.agents.replicas.unwrap_or(2)),
        }
    }
}

impl ExposeSpec {
    /// The CEL rules on `expose`, with their messages.
    fn check(&self) -> Result<(), String> {
        let host = |h: &str| forms::dns_subdomain(h) && h.parse::<std::net::IpAddr>().is_err();
        match (&self.gateway, &self.ingress) {
            (Some(_), Some(_)) | (None, None) => Err("set exactly one of expose.gateway or expose.ingress".into()),
            (Some(g), None) => {
                if g.parent_refs.is_empty() {
                    return Err("expose.gateway.parentRefs must name at least one Gateway".into());
                }
                if let Some(p) = g.parent_refs.iter().find(|p| {
                    !forms::dns_subdomain(&p.name)
                        || p.namespace.as_deref().is_some_and(|n| !forms::dns_subdomain(n) || n.contains('.'))
                        || p.section_name.as_deref().is_some_and(|s| !forms::dns_subdomain(s))
                }) {
                    return Err(format!("expose.gateway.parentRefs entry {:?} is not a Gateway reference", p.name));
                }
                if g.hostnames.is_empty() {
                    return Err("expose.gateway.hostnames must list at least one host name".into());
                }
                match g.hostnames.iter().find(|h| !host(h)) {
                    Some(h) => {
                        Err(format!("expose.gateway.hostnames entry {h:?} is not a host name like video.example.com"))
                    }
                    None => Ok(()),
                }
            }
            (None, Some(i)) => {
                if !host(&i.host) {
                    return Err(format!("expose.ingress.host {:?} is not a host name like video.example.com", i.host));
                }
                let names = [&i.class_name, &i.tls_secret_name];
                if names.iter().any(|n| n.as_deref().is_some_and(|n| !forms::dns_subdomain(n))) {
                    return Err("expose.ingress.className and tlsSecretName must be object names".into());
                }
                match i.annotations.keys().find(|k| !forms::qualified_name(k)) {
                    Some(k) => Err(format!("expose.ingress.annotations key {k:?} is not a qualified name")),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The forms the CRD's patterns and CEL rules accept, as Rust, for [`VideoDeliverySpec::validate`] and for
/// rendering (`ip_net`).
pub mod forms {
    use std::net::IpAddr;

    fn label(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    }

    /// A DNS subdomain (RFC 1123), the form of most object names.
    pub fn dns_subdomain(s: &str) -> bool {
        s.len() <= 253 && s.split('.').all(label)
    }

    /// A label value or the name part of a qualified name, when not empty.
    fn name_part(s: &str) -> bool {
        let b = s.as_bytes();
        let edge = |c: &u8| c.is_ascii_alphanumeric();
        !b.is_empty()
            && b.len() <= 63
            && b.first().is_some_and(edge)
            && b.last().is_some_and(edge)
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    }

    /// An annotation or label key: `[prefix/]name`.
    pub fn qualified_name(s: &str) -> bool {
        match s.split_once('/') {
            Some((prefix, name)) => prefix.len() <= 253 && dns_subdomain(prefix) && name_part(name),
            None => name_part(s),
        }
    }

    pub fn label_value(s: &str) -> bool {
        s.is_empty() || name_part(s)
    }

    /// Why a `file://` directory cannot be the agent's mount path, if it cannot.
    pub fn mount_path_problem(dir: &str) -> Option<String> {
        let segment_ok = |seg: &str| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._~@+=".contains(&c))
        };
        let Some(rest) = dir.strip_prefix('/') else { return Some("must be file:///absolute/dir".into()) };
        if !rest.split('/').all(segment_ok) {
            return Some(
                "must be a canonical absolute path: segments of letters, digits and -._~@+=, with no empty ('//'), \
                 '.' or '..' segment and no trailing '/'"
                    .into(),
            );
        }
        let overlap = super::AGENT_RESERVED_PATHS.iter().find(|m| {
            dir == **m
                || dir.strip_prefix(**m).is_some_and(|r| r.starts_with('/'))
                || m.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
        });
        overlap.map(|m| format!("overlaps {m}, which the agent needs: mount the volume elsewhere, like /media"))
    }

    fn host(h: &str, lowercase: bool) -> bool {
        if let Some(inner) = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return !inner.is_empty()
                && inner.bytes().all(|c| {
                    c.is_ascii_hexdigit() && !(lowercase && c.is_ascii_uppercase()) || c == b':' || c == b'.'
                });
        }
        let b = h.as_bytes();
        let ok = |c: &u8| c.is_ascii_digit() || c.is_ascii_lowercase() || (!lowercase && c.is_ascii_uppercase());
        !b.is_empty()
            && b.first().is_some_and(ok)
            && b.last().is_some_and(ok)
            && b.iter().all(|c| ok(c) || matches!(c, b'-' | b'.'))
    }

    /// `host[:port]` where the port has 1 to 5 digits.
    fn authority(a: &str, lowercase: bool) -> bool {
        let (h, port) = match a.rfind(':') {
            Some(i) if !a[i..].contains(']') => (&a[..i], Some(&a[i + 1..])),
            _ => (a, None),
        };
        host(h, lowercase)
            && port.is_none_or(|p| {
                (1..=5).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok()
            })
    }

    fn strip_scheme(s: &str) -> Option<&str> {
        s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"))
    }

    /// `http(s)://host[:port][/path]`, without userinfo, query, fragment or spaces.
    pub fn endpoint(s: &str) -> bool {
        let Some(rest) = strip_scheme(s) else { return false };
        let (auth, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        authority(auth, false) && path.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._~%/".contains(&c))
    }

    /// An origin as a browser sends it: `http(s)://host[:port]`, lowercase.
    pub fn origin(s: &str) -> bool {
        strip_scheme(s).is_some_and(|a| authority(a, true))
    }

    /// A trusted proxy entry as the agent's `--trusted-proxy` takes it: a CIDR, or an address as a /32 or /128.
    pub fn ip_net(s: &str) -> Option<String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let ip: IpAddr = addr.parse().ok()?;
        if let IpAddr::V6(v6) = ip
            && (v6.to_ipv4_mapped().is_some() || addr.contains('%'))
        {
            return None; // the API server's isIP and isCIDR refuse these too
        }
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) if b.len() > 1 && b.starts_with('0') => return None,
            Some(b) => b.parse::<u8>().ok().filter(|n| *n <= max)?,
        };
        Some(format!("{ip}/{bits}"))
    }

    /// A quantity's value in billionths (saturating), and its sign.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Amount {
        pub negative: bool,
        pub nanos: u128,
    }

    /// Parses a Kubernetes quantity (`100m`, `0.5`, `64Mi`, `1e3`), as `isQuantity` and `quantity()` do.
    pub fn quantity(q: &str) -> Option<Amount> {
        let (negative, rest) = match q.as_bytes().first()? {
            b'+' => (false, &q[1..]),
            b'-' => (true, &q[1..]),
            _ => (false, q),
        };
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(end);
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if int.is_empty() && frac.is_empty() || frac.contains('.') {
            return None;
        }
        let (binary, decimal): (u32, i64) = match suffix {
            "" => (0, 0),
            "Ki" => (1, 0),
            "Mi" => (2, 0),
            "Gi" => (3, 0),
            "Ti" => (4, 0),
            "Pi" => (5, 0),
            "Ei" => (6, 0),
            "n" => (0, -9),
            "u" => (0, -6),
            "m" => (0, -3),
            "k" => (0, 3),
            "M" => (0, 6),
            "G" => (0, 9),
            "T" => (0, 12),
            "P" => (0, 15),
            "E" => (0, 18),
            s if s.starts_with(['e', 'E']) => {
                let e = &s[1..];
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                (0, e.parse::<i64>().unwrap_or(if e.starts_with('-') { i64::MIN / 2 } else { i64::MAX / 2 }))
            }
            _ => return None,
        };
        let mut nanos: u128 = 0;
        for c in int.bytes().chain(frac.bytes()) {
            nanos = nanos.saturating_mul(10).saturating_add(u128::from(c - b'0'));
        }
        let scale = 9 + decimal - frac.len() as i64;
        if scale >= 0 {
            let p = u32::try_from(scale).ok().and_then(|s| 10u128.checked_pow(s)).unwrap_or(u128::MAX);
            nanos = nanos.saturating_mul(p);
        } else {
            // Below a billionth, a non-zero quantity rounds up, as the API server's does.
            let p = u32::try_from(-scale).ok().and_then(|s| 10u128.checked_pow(s));
            nanos = match p {
                Some(p) => nanos.div_ceil(p),
                None => u128::from(nanos > 0),
            };
        }
        nanos = nanos.saturating_mul(1024u128.pow(binary));
        Some(Amount { negative: negative && nanos > 0, nanos })
    }
}

/// What the operator saw and did. Keys appear by id and state only, never their secrets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VideoDeliveryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The key backends sign with now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key_id: Option<String>,
    /// When the active key became active (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<String>,
    /// When the next key becomes active (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_agents: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_agents: Option<i32>,
    /// Where the agents answer inside the cluster, route prefix included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Sidecar mode: the pods that carry this VideoDelivery's injected agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars: Option<SidecarStatus>,
}

/// Counted at each reconcile (at least every few minutes), from the label and settings digest the webhook writes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarStatus {
    /// Running or pending pods with the sidecar.
    pub pods: i32,
    /// Those built from other settings or another image than the current ones: roll their owners to update them.
    pub outdated: i32,
}

/// One key of the keyring, without its secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    pub id: String,
    /// pending, active or retiring.
    pub state: String,
    /// RFC 3339 time the key was created.
    pub created: String,
    /// For a pending key: when it becomes active. For a retiring key: until when its tokens are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> VideoDeliverySpec {
        VideoDeliverySpec {
            storage: StorageSpec { url: url.into(), ..Default::default() },
            signing: SigningSpec::default(),
            agents: AgentsSpec::default(),
            service: ServiceSpec::default(),
            tls: None,
            expose: None,
        }
    }

    #[test]
    fn go_durations_parse() {
        let s = SigningSpec {
            rotation_interval: "1h30m".into(),
            propagation_delay: "90s".into(),
            max_token_lifetime: "1h".into(),
            clock_skew: "0s".into(),
        };
        let p = s.policy().unwrap();
        assert_eq!((p.rotation_interval, p.propagation_delay, p.max_lifetime, p.clock_skew), (5400, 90, 3600, 0));
        for bad in ["", "7d", "1.5h", "h", "-1s", "1 h"] {
            let s = SigningSpec { rotation_interval: bad.into(), ..SigningSpec::default() };
            assert!(matches!(s.policy(), Err(SpecError::Duration { field: "rotationInterval" })), "{bad:?}");
        }
    }

    #[test]
    fn validate_names_the_problem() {
        assert!(spec("s3://bucket/prefix").validate(&SigningFloors::default()).is_ok());
        assert!(matches!(spec("gs://bucket").validate(&SigningFloors::default()), Err(SpecError::StorageUrl)));
        assert!(matches!(spec("file:///data").validate(&SigningFloors::default()), Err(SpecError::VolumeClaimMissing)));
        let mut s = spec("s3://b");
        s.signing.rotation_interval = "24h".into();
        let err = s.validate(&SigningFloors::default()).unwrap_err().to_string();
        assert!(err.contains("rotation interval (86400s)"), "{err}");
        let mut s = spec("s3://b");
        s.agents.autoscaling = Some(AutoscalingSpec { min_replicas: 5, max_replicas: 2, target_cpu_utilization: 70 });
        assert_eq!(
            s.validate(&SigningFloors::default()).unwrap_err().to_string(),
            "agents.autoscaling.minReplicas (5) is above maxReplicas (2)"
        );
    }

    fn with_public(route: &str, prefixes: &[&str]) -> Result<RotationPolicy, SpecError> {
        let mut s = spec("s3://b");
        s.agents.route_prefix = route.into();
        s.agents.public_prefixes = prefixes.iter().map(|p| p.to_string()).collect();
        s.validate(&SigningFloors::default())
    }

    #[test]
    fn public_prefixes_are_folders_under_the_route_prefix() {
        for (route, good) in [
            ("/videos", &["/videos/public/", "/videos/trailers/2024/"][..]),
            ("/videos/", &["/videos/public/"]),
            ("/videos", &["/videos/"]),
            ("/", &["/", "/public/"]),
            ("/videos", &["/videos/.well-known/", "/videos/.../", "/videos/a%2Fb/", "/videos/caf\u{e9}/"]),
        ] {
            assert!(with_public(route, good).is_ok(), "{route} {good:?}: {:?}", with_public(route, good));
        }
        for (route, bad, problem) in [
            ("/videos", "/videos/public", "does not end with '/'"),
            ("/videos", "/videos/../admin/", "has a '.' or '..' segment"),
            ("/videos", "/videos/./public/", "has a '.' or '..' segment"),
            ("/videos", "/other/", "is not under routePrefix \"/videos\""),
            ("/videos", "/videosx/", "is not under routePrefix \"/videos\""),
            ("/videos", "/videos//x/", "has an empty segment ('//')"),
            ("/videos", "videos/public/", "does not start with '/'"),
            ("/videos", "", "does not start with '/'"),
            ("/videos", "/videos/a\\b/", "has a control character or a backslash"),
            ("/videos", "/videos/a\nb/", "has a control character or a backslash"),
            ("/videos", "/videos/a\u{7f}/", "has a control character or a backslash"),
            ("/videos", "/videos/a,b/", "has a comma"),
            ("/media/", "/videos/public/", "is not under routePrefix \"/media/\""),
        ] {
            let folder = if route.ends_with('/') { route.to_string() } else { format!("{route}/") };
            let err = with_public(route, &[&format!("{folder}ok/"), bad]).map(|_| ()).unwrap_err();
            let SpecError::PublicPrefix { prefix, problem: got, example } = &err else { panic!("{bad:?}: {err}") };
            assert_eq!(prefix, bad);
            assert!(got.starts_with(problem), "{bad:?}: {got}");
            assert_eq!(example, &format!("{folder}public/"));
            let text = err.to_string();
            assert!(text.contains("must be a folder under routePrefix, ending in '/'"), "{text}");
            assert!(!text.contains('\n'), "a condition message stays on one line: {text}");
        }
        // The message the operator reports for the trailing-slash mistake.
        assert_eq!(
            with_public("/videos", &["/videos/public"]).unwrap_err().to_string(),
            "agents.publicPrefixes entry \"/videos/public\" does not end with '/' (it would also open names that only \
             start with it, like /videos/public2.mp4): each entry must be a folder under routePrefix, ending in '/', \
             like /videos/public/"
        );
    }

    fn yaml_spec(yaml: &str) -> VideoDeliverySpec {
        serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    #[test]
    fn names_fit_every_derived_name() {
        let longest = "a".repeat(MAX_NAME_LEN);
        for good in ["media", "a", "a1", "video-delivery-2", &longest] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in ["", "Media", "1media", "media-", "-media", "my.media", "me_dia", &too_long] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("must be at most 57 lowercase letters"), "{bad}: {err}");
        }
        let mut vd = VideoDelivery::new("my.media", spec("s3://b"));
        assert!(matches!(vd.validate(&SigningFloors::default()), Err(SpecError::Name { .. })));
        vd.metadata.name = Some("media".into());
        assert!(vd.validate(&SigningFloors::default()).is_ok());
    }

    /// Each spec the CRD refuses, and the error the operator names it with (the CRD may be older than the operator).
    #[test]
    fn validate_refuses_what_breaks_owned_objects_or_agents() {
        let s3 = "storage: {url: 's3://videos'}";
        let cases: &[(String, &str)] = &[
            (format!("{s3}\nagents: {{image: ''}}"), "agents.image must not be empty"),
            (format!("{s3}\nagents: {{image: 'agent :1'}}"), "agents.image must not be empty or hold spaces"),
            (
                format!("{s3}\nagents: {{resources: {{requests: {{memory: 1Gi}}, limits: {{memory: 512Mi}}}}}}"),
                "the memory request (1Gi) is above its limit (512Mi)",
            ),
            (
                format!("{s3}\nagents: {{resources: {{requests: {{cpu: '2'}}, limits: {{cpu: 1500m}}}}}}"),
                "the cpu request (2) is above its limit (1500m)",
            ),
            (format!("{s3}\nagents: {{resources: {{requests: {{cpu: lots}}}}}}"), "agents.resources.requests.cpu"),
            (format!("{s3}\nagents: {{resources: {{limits: {{memory: -1Gi}}}}}}"), "agents.resources.limits.memory"),
            (format!("{s3}\nservice: {{annotations: {{'bad key!': x}}}}"), "service.annotations key \"bad key!\""),
            (format!("{s3}\nservice: {{annotations: {{'a/b/c': x}}}}"), "service.annotations key \"a/b/c\""),
            (
                "storage: {url: 'file:///etc/videodelivery/keyring', volumeClaimName: v}".into(),
                "overlaps /etc/videodelivery/keyring",
            ),
            ("storage: {url: 'file:///etc/videodelivery', volumeClaimName: v}".into(), "overlaps /etc/videodelivery/keyring"),
            ("storage: {url: 'file:///tmp/media', volumeClaimName: v}".into(), "overlaps /tmp"),
            ("storage: {url: 'file:///usr', volumeClaimName: v}".into(), "overlaps /usr"),
            ("storage: {url: 'file:///var', volumeClaimName: v}".into(), "overlaps /var/run"),
            ("storage: {url: 'file:///media/../etc', volumeClaimName: v}".into(), "must be a canonical absolute path"),
            ("storage: {url: 'file:///media//x', volumeClaimName: v}".into(), "must be a canonical absolute path"),
            ("storage: {url: 'file:///media/./x', volumeClaimName: v}".into(), "must be a canonical absolute path"),
            ("storage: {url: 'file:///media/', volumeClaimName: v}".into(), "must be a canonical absolute path"),
            ("storage: {url: 'file:///media?x', volumeClaimName: v}".into(), "must be a canonical absolute path"),
            ("storage: {url: 'file:///media', volumeClaimName: ''}".into(), "is not the name of a PersistentVolumeClaim"),
            ("storage: {url: 'file:///media', volumeClaimName: Films}".into(), "is not the name of a PersistentVolumeClaim"),
            ("storage: {url: 's3://videos', volumeClaimName: films}".into(), "only for a file:// storage"),
            (format!("{s3}\nagents: {{routePrefix: /videos/../admin}}"), "agents.routePrefix \"/videos/../admin\""),
            (format!("{s3}\nagents: {{routePrefix: //videos}}"), "must be a canonical path"),
            (format!("{s3}\nagents: {{routePrefix: /videos/./x}}"), "must be a canonical path"),
            (format!("{s3}\nagents: {{routePrefix: /videos/..}}"), "must be a canonical path"),
            (format!("{s3}\nagents: {{cacheControl: \"private\\r\\nX-Evil: 1\"}}"), "agents.cacheControl must be one line"),
            ("storage: {url: 's3://videos', endpoint: 'minio:9000'}".into(), "storage.endpoint must be a URL"),
            ("storage: {url: 's3://videos', endpoint: 'http://user:secret@minio:9000'}".into(), "storage.endpoint must be a URL"),
            ("storage: {url: 's3://videos', endpoint: 'http://minio:9000/?x=1'}".into(), "storage.endpoint must be a URL"),
            ("storage: {url: 's3://videos', endpoint: 'http://minio:9000#f'}".into(), "storage.endpoint must be a URL"),
            ("storage: {url: 's3://videos', endpoint: 'http://mi nio'}".into(), "storage.endpoint must be a URL"),
            ("storage: {url: 's3://videos', endpoint: 'http://minio:90000'}".into(), "storage.endpoint must be a URL"),
            (format!("{s3}\nagents: {{corsOrigins: ['https://a.example/']}}"), "corsOrigins entry \"https://a.example/\""),
            (format!("{s3}\nagents: {{corsOrigins: ['https://a.example,https://b.example']}}"), "corsOrigins entry"),
            (format!("{s3}\nagents: {{corsOrigins: ['https://A.example']}}"), "corsOrigins entry"),
            (format!("{s3}\nagents: {{corsOrigins: ['a.example']}}"), "corsOrigins entry"),
            (format!("{s3}\nagents: {{corsOrigins: ['https://a.example:65536']}}"), "corsOrigins entry"),
            (format!("{s3}\nagents: {{trustedProxies: [10.0.0.0/33]}}"), "trustedProxies entry \"10.0.0.0/33\""),
            (format!("{s3}\nagents: {{trustedProxies: [proxy.example]}}"), "trustedProxies entry"),
            (format!("{s3}\nagents: {{trustedProxies: ['::ffff:10.0.0.1']}}"), "trustedProxies entry"),
            (format!("{s3}\nagents: {{priorityClassName: High}}"), "agents.priorityClassName \"High\""),
            (format!("{s3}\nagents: {{metrics: {{podMonitor: {{interval: 0s}}}}}}"), "at least 1s"),
            (format!("{s3}\nagents: {{metrics: {{podMonitor: {{labels: {{'bad key': x}}}}}}}}"), "labels entry"),
            (format!("{s3}\ntls: {{secretName: 'Bad_Name'}}"), "tls.secretName \"Bad_Name\""),
            (format!("{s3}\nexpose: {{}}"), "set exactly one of expose.gateway or expose.ingress"),
            (
                format!("{s3}\nexpose: {{gateway: {{parentRefs: [{{name: gw}}], hostnames: [a.example]}}, ingress: {{host: a.example}}}}"),
                "set exactly one",
            ),
            (format!("{s3}\nexpose: {{gateway: {{parentRefs: [{{name: gw}}], hostnames: []}}}}"), "at least one host name"),
            (format!("{s3}\nexpose: {{gateway: {{parentRefs: [], hostnames: [a.example]}}}}"), "at least one Gateway"),
            (format!("{s3}\nexpose: {{gateway: {{parentRefs: [{{name: gw}}], hostnames: ['*.example']}}}}"), "\"*.example\""),
            (format!("{s3}\nexpose: {{ingress: {{host: 'https://a.example'}}}}"), "expose.ingress.host"),
            (format!("{s3}\nexpose: {{ingress: {{host: 10.0.0.1}}}}"), "expose.ingress.host"),
            (format!("{s3}\nexpose: {{ingress: {{host: a.example, annotations: {{'bad key': x}}}}}}"), "annotations key"),
            (
                "storage: {url: 's3://videos'}\nsigning: {rotationInterval: 1s, propagationDelay: 0s, maxTokenLifetime: 0s, clockSkew: 0s}"
                    .into(),
                "is below the operator's floor",
            ),
        ];
        for (yaml, expected) in cases {
            let err = yaml_spec(yaml).validate(&SigningFloors::default()).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(expected), "{yaml}: {err:?} lacks {expected:?}");
            assert!(!err.contains("secret@"), "the endpoint may hold credentials: {err}");
        }
    }

    #[test]
    fn validate_accepts_what_the_agents_can_run() {
        for yaml in [
            "storage: {url: 'file:///media', volumeClaimName: video-archive}",
            "storage: {url: 'file:///srv/videos/2024', volumeClaimName: a.b-c}",
            "storage: {url: 'file:///var/media', volumeClaimName: v}",
            "storage: {url: 'file:///etcetera', volumeClaimName: v}",
            "storage: {url: 's3://videos', endpoint: 'http://minio.storage.svc:9000'}",
            "storage: {url: 's3://videos', endpoint: 'https://s3.example.com/base/path'}",
            "storage: {url: 's3://videos', endpoint: 'http://[fd00::1]:9000'}",
            "storage: {url: 's3://videos'}\nagents: {image: 'registry.example/agent@sha256:abc', routePrefix: /}",
            "storage: {url: 's3://videos'}\nagents: {routePrefix: /videos/}",
            "storage: {url: 's3://videos'}\nagents: {routePrefix: /media/v1.2/~x}",
            "storage: {url: 's3://videos'}\nagents: {resources: {requests: {cpu: 500m, memory: 512Mi}, limits: {cpu: 0.5, memory: 512Mi}}}",
            "storage: {url: 's3://videos'}\nagents: {resources: {requests: {cpu: 2}, limits: {memory: 1G}}}",
            "storage: {url: 's3://videos'}\nagents: {resources: {requests: {memory: 1e9}, limits: {memory: 1G}}}",
            "storage: {url: 's3://videos'}\nservice: {annotations: {'service.beta.kubernetes.io/aws-load-balancer-type': nlb, a_b.c: x}}",
            "storage: {url: 's3://videos'}\nagents: {corsOrigins: ['*', 'https://player.example', 'http://localhost:3000', 'http://[::1]:8080']}",
            "storage: {url: 's3://videos'}\nagents: {trustedProxies: [10.0.0.0/8, 192.0.2.10, 'fd00::/8', '2001:db8::1']}",
            "storage: {url: 's3://videos'}\nagents: {metrics: {podMonitor: {enabled: true, interval: 15s, labels: {release: kps}}}}",
            "storage: {url: 's3://videos'}\ntls: {secretName: media-tls}\nexpose: {gateway: {parentRefs: [{name: public, namespace: gateways, sectionName: https}], hostnames: [video.example.com]}}",
            "storage: {url: 's3://videos'}\nexpose: {ingress: {className: nginx, host: video.example.com, tlsSecretName: video-tls, annotations: {cert-manager.io/cluster-issuer: letsencrypt}}}",
        ] {
            yaml_spec(yaml).validate(&SigningFloors::default()).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        }
    }

    #[test]
    fn quantities_compare_as_the_api_server_does() {
        use forms::{Amount, quantity};
        let n = |nanos: u128| Some(Amount { negative: false, nanos });
        for (q, want) in [
            ("1", n(1_000_000_000)),
            ("100m", n(100_000_000)),
            ("0.1", n(100_000_000)),
            (".5", n(500_000_000)),
            ("5.", n(5_000_000_000)),
            ("1Ki", n(1024 * 1_000_000_000)),
            ("1k", n(1_000_000_000_000)),
            ("1e3", n(1_000_000_000_000)),
            ("1E-3", n(1_000_000)),
            ("1n", n(1)),
            ("0.1n", n(1)),
            ("+2", n(2_000_000_000)),
            ("-1", Some(Amount { negative: true, nanos: 1_000_000_000 })),
            ("-0", n(0)),
            ("", None),
            (".", None),
            ("1.2.3", None),
            ("1KB", None),
            ("1e", None),
            ("Mi", None),
            ("1 Mi", None),
        ] {
            assert_eq!(quantity(q), want, "{q:?}");
        }
        assert_eq!(quantity("1Gi").unwrap().nanos, quantity("1024Mi").unwrap().nanos);
        assert!(quantity("1e400").unwrap().nanos > quantity("1E").unwrap().nanos, "huge values saturate");
    }

    #[test]
    fn trusted_proxies_become_cidrs() {
        for (entry, want) in [
            ("10.0.0.0/8", Some("10.0.0.0/8")),
            ("192.0.2.10", Some("192.0.2.10/32")),
            ("2001:db8::1", Some("2001:db8::1/128")),
            ("fd00::/8", Some("fd00::/8")),
            ("10.0.0.0/08", None),
            ("10.0.0.0/", None),
            ("010.0.0.1", None),
            ("fe80::1%eth0", None),
        ] {
            assert_eq!(forms::ip_net(entry).as_deref(), want, "{entry}");
        }
    }
}
