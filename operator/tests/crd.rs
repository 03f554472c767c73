//! The CRD: generated from the Rust types, committed, accepted by a real API server, and refusing nonsense with
//! messages a person understands.

mod common;

use kube::api::{Api, PostParams};
use vd_testsupport::ControlPlane;
use videodelivery_operator::crd::VideoDelivery;

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
        match api.create(&PostParams::default(), &vd).await {
            Ok(_) => panic!("the API server accepted {yaml:?}"),
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{yaml:?}: {s:?}");
                assert!(s.message.contains(expected), "{yaml:?}: message {:?} lacks {expected:?}", s.message);
            }
            Err(e) => panic!("{yaml:?}: {e}"),
        }
    }
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
        vd.spec.validate().unwrap_or_else(|e| panic!("{agents}: {e}"));
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
    assert_eq!(cols, ["NAME", "READY", "REASON", "ACTIVE", "KEY", "AGENTS", "DESIRED", "AGE"], "{header}");
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
    assert_eq!(names, ["archive", "courses", "demo", "media"]);
    let courses = api.get("courses").await.unwrap();
    assert_eq!(courses.spec.agents.autoscaling.unwrap().target_cpu_utilization, 60, "no field was dropped");
}
