//! Sidecar mode: what the admission webhook adds to a pod that opts in. A pure function of the pod and its
//! VideoDelivery, so every rule is unit-tested without a cluster; `webhook.rs` only reads the VideoDelivery and
//! turns the result into a JSON patch.
//!
//! A pod opts in with the label `videodelivery.dev/inject: "true"` (the webhook's object selector, so no other
//! pod ever reaches the operator) and names its VideoDelivery with the annotation `videodelivery.dev/delivery`.

use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile, Volume, VolumeMount};
use kube::ResourceExt;

use crate::crd::VideoDelivery;
use crate::resources::{self, AgentLayout, SecretVersions};

pub const INJECT_LABEL: &str = "videodelivery.dev/inject";
pub const DELIVERY_ANNOTATION: &str = "videodelivery.dev/delivery";
/// One of the pod's volumes, served read-only as `file://` storage instead of the VideoDelivery's.
pub const MEDIA_VOLUME_ANNOTATION: &str = "videodelivery.dev/media-volume";
/// The sidecar's video port (default 8080) and admin port (default 9090), when the app already uses those.
pub const PORT_ANNOTATION: &str = "videodelivery.dev/port";
pub const ADMIN_PORT_ANNOTATION: &str = "videodelivery.dev/admin-port";
/// Written by the injector: which VideoDelivery's sidecar the pod carries (a label, so the operator can list
/// them) and the settings it was built from (compared with the current ones to count outdated pods).
pub const SIDECAR_OF_LABEL: &str = "videodelivery.dev/sidecar-of";
pub const SIDECAR_HASH_ANNOTATION: &str = "videodelivery.dev/sidecar-hash";
pub const SIDECAR_NAME: &str = "videodelivery-agent";
/// Prefix of the sidecar's volume and port names (`vd-keyring`, `vd-http`, `vd-admin`); port names are at most
/// 15 characters.
pub const PREFIX: &str = "vd-";
/// Where a `media-volume` is mounted in the sidecar.
pub const MEDIA_MOUNT: &str = "/var/run/videodelivery/media";

/// Why a pod that opted in is not admitted. Each message names the annotation or field to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the pod has the label {INJECT_LABEL}=true but no annotation {DELIVERY_ANNOTATION} naming a VideoDelivery")]
    NoDelivery,
    #[error(
        "{DELIVERY_ANNOTATION}: no VideoDelivery named {name:?} in namespace {namespace:?}; create it first, or remove the label {INJECT_LABEL}"
    )]
    NoSuchDelivery { name: String, namespace: String },
    #[error("{MEDIA_VOLUME_ANNOTATION}: the pod has no volume named {0:?}")]
    NoSuchVolume(String),
    #[error("{annotation}: {value:?} is not a port number (1-65535)")]
    BadPort { annotation: &'static str, value: String },
    #[error(
        "the videodelivery sidecar needs port {port} ({what}), but container {container:?} uses it; set the annotation {annotation} to a free port"
    )]
    PortClash { port: i32, what: &'static str, container: String, annotation: &'static str },
    #[error("{PORT_ANNOTATION} and {ADMIN_PORT_ANNOTATION} are both {0}; the sidecar needs two ports")]
    SamePorts(i32),
    #[error("the pod already has a volume named {0:?}, which the videodelivery sidecar needs; rename it")]
    VolumeNameTaken(String),
}

/// Whether the pod asked for a sidecar and does not carry one yet; the VideoDelivery it names, if so.
pub fn requested(pod: &Pod) -> Result<Option<&str>, Refusal> {
    if pod.labels().get(INJECT_LABEL).map(String::as_str) != Some("true") || injected(pod) {
        return Ok(None);
    }
    match pod.annotations().get(DELIVERY_ANNOTATION).map(|s| s.trim()) {
        Some(name) if !name.is_empty() => Ok(Some(name)),
        _ => Err(Refusal::NoDelivery),
    }
}

fn injected(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.init_containers.as_ref()).is_some_and(|c| c.iter().any(|c| c.name == SIDECAR_NAME))
}

/// The settings digest the injector writes on the pod; when the VideoDelivery changes it, the pod is outdated.
pub fn sidecar_hash(vd: &VideoDelivery, image: &str) -> String {
    resources::config_hash(vd, image, SecretVersions::default())
}

/// The image the sidecar runs: the VideoDelivery's, else the operator's default agent image.
pub fn image<'a>(vd: &'a VideoDelivery, default_image: &'a str) -> &'a str {
    vd.spec.agents.image.as_deref().unwrap_or(default_image)
}

fn port(pod: &Pod, annotation: &'static str, default: i32) -> Result<i32, Refusal> {
    match pod.annotations().get(annotation) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<i32>() {
            Ok(p) if (1..=65535).contains(&p) => Ok(p),
            _ => Err(Refusal::BadPort { annotation, value: v.clone() }),
        },
    }
}

/// The pod with the sidecar, or `None` when it needs none (it did not opt in, or already has it: injecting is
/// idempotent, so a re-invoked webhook or a re-applied pod changes nothing).
pub fn inject(pod: &Pod, vd: &VideoDelivery, default_image: &str) -> Result<Option<Pod>, Refusal> {
    if requested(pod)?.is_none() {
        return Ok(None);
    }
    let mut pod = pod.clone();
    let http_port = port(&pod, PORT_ANNOTATION, resources::HTTP_PORT)?;
    let admin_port = port(&pod, ADMIN_PORT_ANNOTATION, resources::ADMIN_PORT)?;
    if http_port == admin_port {
        return Err(Refusal::SamePorts(http_port));
    }
    let media = pod_annotation(&pod, MEDIA_VOLUME_ANNOTATION);
    let spec = pod.spec.get_or_insert_with(Default::default);
    // Ports the app declares. A container that listens on an undeclared port cannot be seen here.
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        for p in c.ports.iter().flatten() {
            for (port, what, annotation) in
                [(http_port, "video", PORT_ANNOTATION), (admin_port, "admin", ADMIN_PORT_ANNOTATION)]
            {
                if p.container_port == port {
                    return Err(Refusal::PortClash { port, what, container: c.name.clone(), annotation });
                }
            }
        }
    }
    if let Some(name) = &media
        && !spec.volumes.iter().flatten().any(|v| &v.name == name)
    {
        return Err(Refusal::NoSuchVolume(name.clone()));
    }
    let storage = media.as_ref().map(|_| format!("file://{MEDIA_MOUNT}"));
    let layout = AgentLayout {
        http_port,
        admin_port,
        storage: storage.as_deref(),
        prefix: PREFIX,
        // World-readable inside the sidecar's own mount: the app's pod may set no fsGroup (and another one),
        // and the volume is mounted in the sidecar alone.
        secret_mode: 0o444,
    };
    let image = image(vd, default_image);
    let (mut container, volumes) = resources::agent_container(vd, image, &layout);
    container.name = SIDECAR_NAME.into();
    // A native sidecar: started before the app's containers, stopped after them, restarted if it exits.
    container.restart_policy = Some("Always".into());
    // The pod's securityContext is the app's: the sidecar carries its own user and seccomp profile.
    if let Some(sc) = container.security_context.as_mut() {
        sc.run_as_user = Some(resources::AGENT_UID);
        sc.run_as_group = Some(resources::AGENT_UID);
        sc.seccomp_profile = Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() });
    }
    if let Some(name) = &media {
        container.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
            name: name.clone(),
            mount_path: MEDIA_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let pod_volumes = spec.volumes.get_or_insert_with(Vec::new);
    for v in &volumes {
        if pod_volumes.iter().any(|p: &Volume| p.name == v.name) {
            return Err(Refusal::VolumeNameTaken(v.name.clone()));
        }
    }
    pod_volumes.extend(volumes);
    add_image_pull_secrets(spec, vd);
    // First, so it serves before the app's own init containers run.
    spec.init_containers.get_or_insert_with(Vec::new).insert(0, container);
    pod.labels_mut().insert(SIDECAR_OF_LABEL.into(), vd.name_any());
    pod.annotations_mut().insert(SIDECAR_HASH_ANNOTATION.into(), sidecar_hash(vd, image));
    Ok(Some(pod))
}

fn pod_annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.annotations().get(key).map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The VideoDelivery's pull secrets, added to the pod's (the sidecar's image may live in a private registry).
fn add_image_pull_secrets(spec: &mut k8s_openapi::api::core::v1::PodSpec, vd: &VideoDelivery) {
    if vd.spec.agents.image_pull_secrets.is_empty() {
        return;
    }
    let list = spec.image_pull_secrets.get_or_insert_with(Vec::new);
    for s in &vd.spec.agents.image_pull_secrets {
        if !list.contains(s) {
            list.push(s.clone());
        }
    }
}

/// Counts of a VideoDelivery's sidecars for its status: the pods carrying one, and those built from settings other
/// than the current ones.
pub fn count(pods: &[Pod], vd: &VideoDelivery, default_image: &str) -> (i32, i32) {
    let current = sidecar_hash(vd, image(vd, default_image));
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .collect();
    let outdated = live.iter().filter(|p| p.annotations().get(SIDECAR_HASH_ANNOTATION) != Some(&current)).count();
    (clamp(live.len()), clamp(outdated))
}

fn clamp(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The sidecar container in an injected pod, for tests and tools.
pub fn sidecar(pod: &Pod) -> Option<&Container> {
    pod.spec.as_ref()?.init_containers.as_ref()?.iter().find(|c| c.name == SIDECAR_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vd(spec: &str) -> VideoDelivery {
        let mut v = VideoDelivery::new("media", serde_yaml_ng::from_str(spec).unwrap());
        v.metadata.namespace = Some("web".into());
        v.metadata.uid = Some("uid-1".into());
        v
    }

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const APP: &str = r#"
metadata:
  name: app
  labels: {videodelivery.dev/inject: "true", app: web}
  annotations: {videodelivery.dev/delivery: media}
spec:
  containers:
    - name: web
      image: next:1
      ports: [{containerPort: 3000}]
"#;

    #[test]
    fn an_opted_in_pod_gets_a_native_sidecar_built_like_the_fleet() {
        let v = vd("storage: {url: 's3://videos'}\nagents: {image: 'agent:2', imagePullSecrets: [{name: reg}]}");
        let out = inject(&pod(APP), &v, "default:1").unwrap().unwrap();
        let spec = out.spec.as_ref().unwrap();
        let c = sidecar(&out).unwrap();
        assert_eq!(spec.init_containers.as_ref().unwrap()[0].name, SIDECAR_NAME, "first, before the app's");
        assert_eq!(c.restart_policy.as_deref(), Some("Always"), "a native sidecar");
        assert_eq!(c.image.as_deref(), Some("agent:2"));
        let fleet = resources::deployment(&v, "agent:2", SecretVersions::default());
        let fleet_c = &fleet.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(c.args, fleet_c.args, "the fleet's settings");
        assert_eq!(c.resources, fleet_c.resources);
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!((sc.run_as_non_root, sc.read_only_root_filesystem), (Some(true), Some(true)));
        assert_eq!(sc.run_as_user, Some(resources::AGENT_UID));
        let probe = c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(probe.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("vd-admin".into()));
        let keyring = spec.volumes.as_ref().unwrap().iter().find(|v| v.name == "vd-keyring").unwrap();
        assert_eq!(keyring.secret.as_ref().unwrap().secret_name.as_deref(), Some("media-keyring"));
        assert!(c.volume_mounts.as_ref().unwrap().iter().any(|m| m.name == "vd-keyring" && m.read_only == Some(true)));
        assert_eq!(out.labels()[SIDECAR_OF_LABEL], "media");
        assert_eq!(out.annotations()[SIDECAR_HASH_ANNOTATION], sidecar_hash(&v, "agent:2"));
        assert_eq!(spec.image_pull_secrets.as_ref().unwrap()[0].name, "reg");
        assert_eq!(spec.containers.len(), 1, "the app's containers are untouched");
    }

    #[test]
    fn injecting_twice_changes_nothing_and_other_pods_are_ignored() {
        let v = vd("storage: {url: 's3://videos'}");
        let once = inject(&pod(APP), &v, "i").unwrap().unwrap();
        assert_eq!(inject(&once, &v, "i").unwrap(), None);
        let mut other = pod(APP);
        other.labels_mut().insert(INJECT_LABEL.into(), "false".into());
        assert_eq!(inject(&other, &v, "i").unwrap(), None);
    }

    #[test]
    fn a_media_volume_is_served_read_only_as_file_storage() {
        let v = vd("storage: {url: 's3://videos'}");
        let mut p = pod(APP);
        p.annotations_mut().insert(MEDIA_VOLUME_ANNOTATION.into(), "uploads".into());
        assert_eq!(inject(&p, &v, "i").unwrap_err(), Refusal::NoSuchVolume("uploads".into()));
        p.spec.as_mut().unwrap().volumes = Some(vec![Volume { name: "uploads".into(), ..Default::default() }]);
        let out = inject(&p, &v, "i").unwrap().unwrap();
        let c = sidecar(&out).unwrap();
        assert!(c.args.as_ref().unwrap().contains(&format!("--storage=file://{MEDIA_MOUNT}")));
        let m = c.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "uploads").unwrap();
        assert_eq!((m.mount_path.as_str(), m.read_only), (MEDIA_MOUNT, Some(true)));
    }

    #[test]
    fn clashing_ports_are_refused_with_the_annotation_to_set() {
        let v = vd("storage: {url: 's3://videos'}");
        let mut p = pod(APP);
        p.spec.as_mut().unwrap().containers[0].ports.as_mut().unwrap()[0].container_port = 8080;
        let err = inject(&p, &v, "i").unwrap_err();
        assert!(matches!(err, Refusal::PortClash { port: 8080, .. }), "{err}");
        assert!(err.to_string().contains("container \"web\" uses it; set the annotation videodelivery.dev/port"));
        p.annotations_mut().insert(PORT_ANNOTATION.into(), "8081".into());
        let out = inject(&p, &v, "i").unwrap().unwrap();
        assert!(sidecar(&out).unwrap().args.as_ref().unwrap().contains(&"--listen=0.0.0.0:8081".to_string()));
        p.annotations_mut().insert(ADMIN_PORT_ANNOTATION.into(), "8081".into());
        assert_eq!(inject(&p, &v, "i").unwrap_err(), Refusal::SamePorts(8081));
        p.annotations_mut().insert(ADMIN_PORT_ANNOTATION.into(), "99999".into());
        assert!(matches!(inject(&p, &v, "i").unwrap_err(), Refusal::BadPort { .. }));
    }

    #[test]
    fn a_missing_delivery_annotation_or_a_taken_volume_name_is_refused() {
        let v = vd("storage: {url: 's3://videos'}");
        let mut p = pod(APP);
        p.annotations_mut().remove(DELIVERY_ANNOTATION);
        assert_eq!(requested(&p).unwrap_err(), Refusal::NoDelivery);
        let mut p = pod(APP);
        p.spec.as_mut().unwrap().volumes = Some(vec![Volume { name: "vd-keyring".into(), ..Default::default() }]);
        assert_eq!(inject(&p, &v, "i").unwrap_err(), Refusal::VolumeNameTaken("vd-keyring".into()));
    }

    #[test]
    fn pods_with_other_settings_count_as_outdated() {
        let v = vd("storage: {url: 's3://videos'}");
        let a = inject(&pod(APP), &v, "i").unwrap().unwrap();
        let mut changed = v.clone();
        changed.spec.agents.cache_control = "public, max-age=60".into();
        let b = inject(&pod(APP), &changed, "i").unwrap().unwrap();
        assert_eq!(count(&[a.clone(), b.clone()], &v, "i"), (2, 1));
        assert_eq!(count(&[a.clone(), b], &changed, "i"), (2, 1));
        assert_eq!(count(std::slice::from_ref(&a), &v, "other-image"), (1, 1), "a new default image outdates the pod");
    }
}
