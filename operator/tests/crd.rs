//! The CRD: generated from the Rust types, committed, accepted by a real API server, and refusing nonsense with
//! messages a person understands.

mod common;

use kube::ResourceExt;
use kube::api::{Api, PostParams};
use vd_testsupport::ControlPlane;
use videodelivery_operator::crd::{MAX_NAME_LEN, SigningFloors, VideoDelivery};
use videodelivery_operator::resources;

#[test]
fn committed_crd_is_what_crdgen_prints() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crdgen")).output().unwrap();
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/videodelivery.yaml")).unwrap();
    assert!(
        committed == String::from_utf8(out.stdout).unwrap(),
        "crds/videodelivery.yaml is stale: run `cargo run -p videodelivery-operator --bin crdgen > crds/videodelivery.yaml`"
    );
}

#[tokio::test]
async fn the_api_server_applies_defaults() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("crd-defaults").await.unwrap();
    let vd = common::create(&client, &ns, "media", "storage: {url: 's3://videos'}").await;
    let s = &vd.spec;
    assert_eq!(
        (
            &*s.signing.rotation_interval,
            &*s.signing.propagation_delay,
            &*s.signing.max_token_lifetime,
            &*s.signing.clock_skew
        ),
        ("168h", "2m", "24h", "30s")
    );
    assert_eq!(s.agents.route_prefix, "/videos");
    assert_eq!(s.agents.rate_limit.requests_per_second, 50);
    assert_eq!((&*s.service.type_, s.service.port), ("ClusterIP", 80));
}

#[tokio::test]
async fn nonsense_is_refused_at_apply_time_with_a_readable_message() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("crd-invalid").await.unwrap();
    let api: Api<VideoDelivery> = Api::namespaced(client, &ns);
    let cases = [
        (
            "storage: {url: 's3://videos'}\nsigning: {rotationInterval: 24h, maxTokenLifetime: 24h}",
            "signing.rotationInterval must be longer than propagationDelay + maxTokenLifetime + clockSkew",
        ),
        ("storage: {url: 'gs://videos'}", "storage.url must be s3://bucket[/prefix] or file:///absolute/dir"),
        ("storage: {url: 'file:///media'}", "a file:// storage needs volumeClaimName"),
        (
            "storage: {url: 's3://videos'}\nagents: {autoscaling: {minReplicas: 5, maxReplicas: 2}}",
            "agents.autoscaling.minReplicas must not be above maxReplicas",
        ),
        (
            "storage: {url: 's3://videos'}\nagents: {playback: {session: {secureCookie: false}}}",
            "sameSite None needs secureCookie",
        ),
        (
            "storage: {url: 's3://videos'}\nagents: {replicas: 3, autoscaling: {maxReplicas: 4}}",
            "set agents.replicas or agents.autoscaling, not both",
        ),
        ("storage: {url: 's3://videos'}\nsigning: {rotationInterval: 7d}", "spec.signing.rotationInterval"),
        ("storage: {url: 's3://videos'}\nservice: {type: Ingress}", "spec.service.type"),
        ("storage: {url: 's3://videos'}\nagents: {replicas: -1}", "spec.agents.replicas"),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let vd = VideoDelivery::new(&format!("bad-{i}"), common::spec(yaml));
        refused(&api, &vd, expected).await;
    }
    // What breaks owned objects or agents: refused by the CRD, and by the operator's own check (for a CRD older
    // than the operator), each with a readable message.
    let s3 = "storage: {url: 's3://videos'}";
    let file = |dir: &str, claim: &str| format!("storage: {{url: 'file://{dir}', volumeClaimName: '{claim}'}}");
    let mount = "storage.url file:///dir is where the volume is mounted in the agent: it must not be, contain or lie in \
                 /etc/videodelivery/keyring";
    let canonical = "storage.url file:///dir must be a canonical absolute path";
    let endpoint = "storage.endpoint must be a URL like https://host[:port][/path], without user, query, fragment or \
                    spaces (credentials belong in credentialsSecretRef)";
    let cors = "each agents.corsOrigins entry must be * or an origin as browsers send it";
    let route = "agents.routePrefix must be a canonical path like /videos";
    let claim = "storage.volumeClaimName must be the name of a PersistentVolumeClaim";
    let cases: Vec<(String, &str)> = vec![
        (format!("{s3}\nagents: {{image: ''}}"), "agents.image must be an image reference"),
        (format!("{s3}\nagents: {{image: 'agent :1'}}"), "agents.image must be an image reference"),
        (
            format!("{s3}\nagents: {{resources: {{requests: {{memory: 1Gi}}, limits: {{memory: 512Mi}}}}}}"),
            "agents.resources: a request must not be above the limit of the same resource",
        ),
        (
            format!("{s3}\nagents: {{resources: {{requests: {{cpu: 2}}, limits: {{cpu: 1500m}}}}}}"),
            "agents.resources: a request must not be above the limit of the same resource",
        ),
        (
            format!("{s3}\nagents: {{resources: {{requests: {{cpu: lots}}}}}}"),
            "agents.resources: each request and limit must be a quantity like 100m",
        ),
        (
            format!("{s3}\nagents: {{resources: {{limits: {{memory: -1Gi}}}}}}"),
            "agents.resources: each request and limit must be a quantity like 100m",
        ),
        (
            format!("{s3}\nservice: {{annotations: {{'bad key!': x}}}}"),
            "each service.annotations key must be a qualified name like example.com/name",
        ),
        (file("/etc/videodelivery/keyring", "v"), mount),
        (file("/etc/videodelivery", "v"), mount),
        (file("/etc/videodelivery/keyring/media", "v"), mount),
        (file("/tmp", "v"), mount),
        (file("/usr/local", "v"), mount),
        (file("/media/../etc", "v"), canonical),
        (file("/media//x", "v"), canonical),
        (file("/media/./x", "v"), canonical),
        (file("/media/", "v"), canonical),
        (file("/media", ""), claim),
        (file("/media", "Films"), claim),
        (
            "storage: {url: 's3://videos', volumeClaimName: films}".into(),
            "storage.volumeClaimName is only for a file:// storage",
        ),
        (format!("{s3}\nagents: {{routePrefix: /videos/../admin}}"), route),
        (format!("{s3}\nagents: {{routePrefix: //videos}}"), route),
        (format!("{s3}\nagents: {{routePrefix: /videos/./x}}"), route),
        (
            format!("{s3}\nagents: {{cacheControl: \"private\\r\\nX-Injected: 1\"}}"),
            "agents.cacheControl must be one line without control characters",
        ),
        ("storage: {url: 's3://videos', endpoint: 'minio:9000'}".into(), endpoint),
        ("storage: {url: 's3://videos', endpoint: 'http://user:hunter2@minio:9000'}".into(), endpoint),
        ("storage: {url: 's3://videos', endpoint: 'http://minio:9000/?region=x'}".into(), endpoint),
        ("storage: {url: 's3://videos', endpoint: 'http://minio:90000'}".into(), endpoint),
        (format!("{s3}\nagents: {{corsOrigins: ['https://player.example/']}}"), cors),
        (format!("{s3}\nagents: {{corsOrigins: ['https://a.example,https://b.example']}}"), cors),
        (format!("{s3}\nagents: {{corsOrigins: ['https://player.example:65536']}}"), cors),
        (
            format!("{s3}\nagents: {{trustedProxies: [10.0.0.0/33]}}"),
            "each agents.trustedProxies entry must be a CIDR like 10.0.0.0/8",
        ),
        (
            format!("{s3}\nagents: {{metrics: {{podMonitor: {{enabled: true, interval: 0s}}}}}}"),
            "agents.metrics.podMonitor.interval must be at least 1s",
        ),
        // The production floors (this test binary keeps them).
        (
            format!(
                "{s3}\nsigning: {{rotationInterval: 1s, propagationDelay: 0s, maxTokenLifetime: 0s, clockSkew: 0s}}"
            ),
            "signing.rotationInterval must be at least 1h",
        ),
        (format!("{s3}\nsigning: {{propagationDelay: 0s}}"), "signing.propagationDelay must be at least 2m"),
        (format!("{s3}\nsigning: {{maxTokenLifetime: 0s}}"), "signing.maxTokenLifetime must be at least 1m"),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let vd = VideoDelivery::new(&format!("form-{i}"), common::spec(yaml));
        refused(&api, &vd, expected).await;
        let text = refusal_text(&api, &vd).await;
        assert!(!text.contains("hunter2"), "a refusal never repeats a credential: {text}");
        assert!(vd.validate(&SigningFloors::default()).is_err(), "the operator accepts what the CRD refuses: {yaml}");
    }
    // Durations below a second do not match the pattern at all.
    let vd = VideoDelivery::new("form-ms", common::spec(&format!("{s3}\nsigning: {{propagationDelay: 1ms}}")));
    refused(&api, &vd, "spec.signing.propagationDelay in body should match '^([0-9]+(h|m|s))+$'").await;
    // Names from which a derived name would be invalid.
    let name_message = "metadata.name must be at most 57 lowercase letters, digits or '-', start with a letter and end \
                        with a letter or digit (no '.')";
    for name in ["my.media".to_string(), "a".repeat(58), "1media".into()] {
        let vd = VideoDelivery::new(&name, common::spec(s3));
        refused(&api, &vd, name_message).await;
        assert!(vd.validate(&SigningFloors::default()).is_err(), "{name}");
    }
    // What `kubectl apply` prints.
    let manifest = common_manifest("my.media", s3);
    let out = kubectl(cp, &["apply", "-n", &ns, "-f", "-"], &manifest);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(name_message), "{stderr}");
}

/// Asserts that the API server refuses `vd` with 422 and a message that contains `expected`.
async fn refused(api: &Api<VideoDelivery>, vd: &VideoDelivery, expected: &str) {
    let what = serde_json::to_string(&vd.spec).unwrap();
    match api.create(&PostParams::default(), vd).await {
        Ok(_) => panic!("the API server accepted {} {what}", vd.name_any()),
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{what}: {s:?}");
            assert!(s.message.contains(expected), "{what}: message {:?} lacks {expected:?}", s.message);
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

async fn refusal_text(api: &Api<VideoDelivery>, vd: &VideoDelivery) -> String {
    match api.create(&PostParams { dry_run: true, ..Default::default() }, vd).await {
        Err(kube::Error::Api(s)) => s.message,
        other => panic!("{other:?}"),
    }
}

fn common_manifest(name: &str, spec: &str) -> String {
    let spec: serde_json::Value = serde_yaml_ng::from_str(spec).unwrap();
    serde_json::json!({
        "apiVersion": "videodelivery.dev/v1alpha1",
        "kind": "VideoDelivery",
        "metadata": {"name": name},
        "spec": spec,
    })
    .to_string()
}

fn kubectl(cp: &ControlPlane, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(vd_testsupport::binary("kubectl").unwrap())
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Specs at the edges of what the CRD accepts, new fields included: the API server takes them, the operator's
/// check agrees, and every object the operator would make from them is one the API server takes too.
#[tokio::test]
async fn good_specs_pass_and_make_valid_owned_objects() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("crd-good").await.unwrap();
    let api: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    let longest = format!("m{}", "0123456789".repeat(6))[..MAX_NAME_LEN].to_string();
    let cases = [
        (longest.as_str(), "storage: {url: 'file:///srv/videos/2024', volumeClaimName: video-archive.v2}"),
        (
            "scheduled",
            r#"
storage: {url: 's3://videos', endpoint: 'https://s3.example.com:9000/base', pathStyle: true}
agents:
  image: registry.example/videodelivery-agent:1.2
  replicas: 3
  routePrefix: /videos/
  cacheControl: public, max-age=60
  corsOrigins: ['*', 'https://player.example', 'http://localhost:3000', 'https://player.example:65535']
  trustedProxies: [10.0.0.0/8, 192.0.2.10, 'fd00::/8']
  resources: {requests: {cpu: 500m, memory: 256Mi}, limits: {cpu: 1, memory: 512Mi}}
  nodeSelector: {pool: video}
  tolerations: [{key: dedicated, operator: Equal, value: video, effect: NoSchedule}]
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - {weight: 100, podAffinityTerm: {topologyKey: kubernetes.io/hostname}}
  topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}]
  priorityClassName: system-cluster-critical
  imagePullSecrets: [{name: registry}]
  networkPolicy:
    enabled: true
    from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}}, {ipBlock: {cidr: 10.0.0.0/8}}]
    metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
  metrics: {podMonitor: {enabled: true, interval: 15s, labels: {release: kube-prometheus-stack}}}
  diskCache: {sizeMiB: 20480}
service: {annotations: {service.beta.kubernetes.io/aws-load-balancer-type: nlb, cdn_hint: origin}}
"#,
        ),
        (
            "autoscaled",
            "storage: {url: 's3://videos'}\nagents: {autoscaling: {minReplicas: 2, maxReplicas: 5}, networkPolicy: {enabled: true}}",
        ),
    ];
    for (name, yaml) in cases {
        let vd = api.create(&PostParams::default(), &VideoDelivery::new(name, common::spec(yaml))).await;
        let vd = vd.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(vd.spec, common::spec(yaml), "{name}: the API server dropped or changed a field");
        vd.validate(&SigningFloors::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut objects = vec![
            typed(resources::deployment(
                &vd,
                "registry.example/agent:1",
                resources::SecretVersions { credentials: Some("1") },
            )),
            typed(resources::service(&vd)),
            typed(resources::service_account(&vd)),
            typed(resources::keyring_secret(&vd, Default::default(), None)),
        ];
        objects.extend(resources::network_policy(&vd).map(typed));
        objects.extend(resources::hpa(&vd).map(typed));
        objects.extend(resources::pdb(&vd).map(typed));
        for value in objects {
            let kind = value["kind"].as_str().unwrap().to_string();
            let gvk = kube::api::GroupVersionKind::try_from(&kube::api::TypeMeta {
                api_version: value["apiVersion"].as_str().unwrap().into(),
                kind: kind.clone(),
            })
            .unwrap();
            let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
            let obj: kube::api::DynamicObject = serde_json::from_value(value).unwrap();
            let dry = PostParams { dry_run: true, ..Default::default() };
            api.create(&dry, &obj).await.unwrap_or_else(|e| panic!("{name}: the API server refuses its {kind}: {e}"));
        }
    }
}

fn typed<K: kube::Resource<DynamicType = ()> + serde::Serialize>(k: K) -> serde_json::Value {
    let mut v = serde_json::to_value(&k).unwrap();
    v["apiVersion"] = K::api_version(&()).into();
    v["kind"] = K::kind(&()).into();
    v
}

#[tokio::test]
async fn public_prefixes_must_be_folders_under_the_route_prefix() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("crd-public-prefixes").await.unwrap();
    let api: Api<VideoDelivery> = Api::namespaced(client, &ns);
    let form = "each agents.publicPrefixes entry must be a folder that starts and ends with '/', like /videos/public/";
    let under = "each agents.publicPrefixes entry must be a folder under routePrefix /videos, ending in '/', like \
                 /videos/public/";
    // (agents, the message, the field it names): the bad entry is second, after a good one.
    let cases = [
        ("{publicPrefixes: [/videos/ok/, /videos/public]}", form, "spec.agents.publicPrefixes[1]"),
        ("{publicPrefixes: [/videos/ok/, /videos/../admin/]}", form, "spec.agents.publicPrefixes[1]"),
        ("{publicPrefixes: [/videos/ok/, /videos/./public/]}", form, "spec.agents.publicPrefixes[1]"),
        ("{publicPrefixes: [/videos/ok/, /videos//x/]}", form, "spec.agents.publicPrefixes[1]"),
        ("{publicPrefixes: [/videos/ok/, 'videos/public/']}", form, "spec.agents.publicPrefixes[1]"),
        ("{publicPrefixes: [/videos/ok/, '/videos/a\\b/']}", form, "spec.agents.publicPrefixes[1]"),
        ("{publicPrefixes: [/videos/ok/, \"/videos/a\\tb/\"]}", form, "spec.agents.publicPrefixes[1]"),
        ("{publicPrefixes: [/videos/ok/, '/videos/a,b/']}", form, "spec.agents.publicPrefixes[1]"),
        ("{publicPrefixes: [/videos/ok/, /other/]}", under, "spec.agents.publicPrefixes"),
        ("{publicPrefixes: [/videos/ok/, /videosx/]}", under, "spec.agents.publicPrefixes"),
        (
            "{routePrefix: /media/, publicPrefixes: [/videos/public/]}",
            "must be a folder under routePrefix /media/, ending in '/', like /media/public/",
            "spec.agents.publicPrefixes",
        ),
    ];
    for (i, (agents, expected, field)) in cases.iter().enumerate() {
        let yaml = format!("storage: {{url: 's3://videos'}}\nagents: {agents}");
        let vd = VideoDelivery::new(&format!("bad-{i}"), common::spec(&yaml));
        match api.create(&PostParams::default(), &vd).await {
            Ok(_) => panic!("the API server accepted {agents}"),
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{agents}: {s:?}");
                assert!(s.message.contains(expected), "{agents}: message {:?} lacks {expected:?}", s.message);
                assert!(s.message.contains(&format!("{field}:")), "{agents}: message {:?} lacks {field:?}", s.message);
            }
            Err(e) => panic!("{agents}: {e}"),
        }
    }
    // A list longer than 32 entries or an entry longer than 512 bytes is refused by plain bounds.
    let many: Vec<String> = (0..33).map(|i| format!("/videos/p{i}/")).collect();
    let long = format!("/videos/{}/", "a".repeat(600));
    for (agents, field) in [
        (format!("{{publicPrefixes: [{}]}}", many.join(", ")), "spec.agents.publicPrefixes"),
        (format!("{{publicPrefixes: [{long}]}}"), "spec.agents.publicPrefixes[0]"),
    ] {
        let yaml = format!("storage: {{url: 's3://videos'}}\nagents: {agents}");
        let err = api.create(&PostParams::default(), &VideoDelivery::new("too-big", common::spec(&yaml))).await;
        let Err(kube::Error::Api(s)) = err else { panic!("{field}: {err:?}") };
        assert!(s.code == 422 && s.message.contains(field), "{field}: {s:?}");
    }
    // What the agent can serve is accepted, and the operator's own check agrees.
    for (i, agents) in [
        "{publicPrefixes: [/videos/public/, /videos/trailers/2024/, /videos/.well-known/]}",
        "{routePrefix: /media/, publicPrefixes: [/media/public/]}",
        "{routePrefix: /, publicPrefixes: [/public/]}",
        "{publicPrefixes: [/videos/]}",
    ]
    .iter()
    .enumerate()
    {
        let yaml = format!("storage: {{url: 's3://videos'}}\nagents: {agents}");
        let vd =
            api.create(&PostParams::default(), &VideoDelivery::new(&format!("good-{i}"), common::spec(&yaml))).await;
        let vd = vd.unwrap_or_else(|e| panic!("{agents}: {e}"));
        assert!(!vd.spec.agents.public_prefixes.is_empty());
        vd.spec
            .validate(&videodelivery_operator::crd::SigningFloors::default())
            .unwrap_or_else(|e| panic!("{agents}: {e}"));
    }
}

#[tokio::test]
async fn kubectl_get_vd_shows_the_printer_columns() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("crd-columns").await.unwrap();
    common::create(&client, &ns, "media", "storage: {url: 's3://videos'}").await;
    let out = std::process::Command::new(vd_testsupport::binary("kubectl").unwrap())
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(["get", "vd", "-n", &ns])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let header = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string();
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(cols, ["NAME", "READY", "REASON", "ACTIVE", "KEY", "AGENTS", "DESIRED", "URL", "AGE"], "{header}");
}

#[tokio::test]
async fn the_examples_apply_cleanly() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("examples").await.unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let out = std::process::Command::new(vd_testsupport::binary("kubectl").unwrap())
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(["apply", "-n", &ns, "-f", dir])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let api: Api<VideoDelivery> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let names: Vec<String> =
        api.list(&Default::default()).await.unwrap().items.into_iter().map(|v| v.metadata.name.unwrap()).collect();
    assert_eq!(names, ["archive", "courses", "demo", "live", "media", "public"]);
    let courses = api.get("courses").await.unwrap();
    assert_eq!(courses.spec.agents.autoscaling.unwrap().target_cpu_utilization, 60, "no field was dropped");
    let live = api.get("live").await.unwrap();
    assert_eq!(live.spec.agents.trusted_proxies, ["10.0.0.0/8", "192.0.2.10"], "no field was dropped");
    assert!(live.spec.agents.network_policy.is_some_and(|np| np.enabled && np.metrics_from.len() == 1));
    for vd in api.list(&Default::default()).await.unwrap() {
        vd.validate(&SigningFloors::default()).unwrap_or_else(|e| panic!("{}: {e}", vd.name_any()));
    }
}
