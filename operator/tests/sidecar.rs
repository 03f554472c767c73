//! Sidecar mode against the real API server: the API server calls the operator's webhook (a process on this host)
//! through the chart's own MutatingWebhookConfiguration, with its clientConfig pointed at 127.0.0.1 because the
//! chart's Service form needs a node to route it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Operator, eventually, free_port};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use vd_testsupport::ControlPlane;
use videodelivery_operator::crd::VideoDelivery;
use videodelivery_operator::inject::{self, SIDECAR_HASH_ANNOTATION, SIDECAR_OF_LABEL};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/videodelivery");
const LONG: Duration = Duration::from_secs(60);

/// The chart's MutatingWebhookConfiguration, named for this test, calling `url`, for namespace `ns` alone (the
/// control plane is shared with other tests).
fn chart_webhook_configuration(cp: &ControlPlane, name: &str, url: &str, ns: &str) -> MutatingWebhookConfiguration {
    let out = Command::new(vd_testsupport::binary("helm").unwrap())
        .args(["template", "vd", CHART, "--namespace", "vd-system", "--set", "sidecar.enabled=true"])
        .env("HELM_CACHE_HOME", cp.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", cp.dir().join("helm/config"))
        .env("HELM_DATA_HOME", cp.dir().join("helm/data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let doc = text
        .split("\n---")
        .filter_map(|d| serde_yaml_ng::from_str::<serde_json::Value>(d).ok())
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("the chart renders a MutatingWebhookConfiguration");
    let mut config: MutatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
    config.metadata.name = Some(name.into());
    let hook = &mut config.webhooks.as_mut().unwrap()[0];
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(hook.side_effects, "None");
    hook.client_config.service = None;
    hook.client_config.url = Some(url.into());
    hook.namespace_selector = Some(
        serde_json::from_value(serde_json::json!({
            "matchLabels": {"kubernetes.io/metadata.name": ns}
        }))
        .unwrap(),
    );
    config
}

fn pod(name: &str, opt_in: bool, annotations: serde_json::Value, port: i32) -> Pod {
    let labels = if opt_in { serde_json::json!({"videodelivery.dev/inject": "true"}) } else { serde_json::json!({}) };
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "containers": [{"name": "web", "image": "registry.example/next:1", "ports": [{"containerPort": port}]}],
            "volumes": [{"name": "uploads", "emptyDir": {}}],
        }
    }))
    .unwrap()
}

async fn refusal(pods: &Api<Pod>, p: &Pod) -> String {
    match pods.create(&PostParams::default(), p).await {
        Ok(created) => panic!("{} was admitted: {:?}", p.name_any(), created.spec),
        Err(kube::Error::Api(e)) => e.message,
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_injects_opted_in_pods_refuses_clashes_and_fails_closed() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("sidecar").await.unwrap();
    let name = format!("vd-sidecar-{ns}");
    let port = free_port();
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configs
        .create(
            &PostParams::default(),
            &chart_webhook_configuration(cp, &name, &format!("https://127.0.0.1:{port}/mutate-pods"), &ns),
        )
        .await
        .unwrap();
    let mut op = Operator::start(
        cp,
        &ns,
        &[
            &format!("--webhook-listen=127.0.0.1:{port}"),
            "--webhook-host=127.0.0.1",
            &format!("--webhook-configuration={name}"),
            &format!("--lease-namespace={ns}"),
        ],
    );
    common::create(&client, &ns, "media", "storage: {url: 's3://videos'}\nagents: {replicas: 1}").await;

    // The operator makes its CA, keeps it in a Secret, and writes the bundle into the configuration.
    let bundle = eventually("the CA bundle in the MutatingWebhookConfiguration", LONG, || async {
        let c = configs.get(&name).await.ok()?;
        c.webhooks?.remove(0).client_config.ca_bundle
    })
    .await;
    let secret = Api::<Secret>::namespaced(client.clone(), &ns).get("videodelivery-webhook-tls").await.unwrap();
    assert_eq!(secret.data.as_ref().unwrap()["ca.crt"], bundle, "the bundle is the Secret's CA");

    // An opted-in pod gets the native sidecar, built from the VideoDelivery.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let app = pod("app", true, serde_json::json!({"videodelivery.dev/delivery": "media"}), 3000);
    let created = eventually("an opted-in pod admitted", LONG, || async {
        pods.create(&PostParams::default(), &app).await.map_err(|e| eprintln!("{e}")).ok()
    })
    .await;
    let sidecar = inject::sidecar(&created).unwrap_or_else(|| panic!("no sidecar: {:?}", created.spec));
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(sidecar.image.as_deref(), Some(common::AGENT_IMAGE));
    assert!(sidecar.args.as_ref().unwrap().contains(&"--storage=s3://videos".to_string()));
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.containers.len(), 1, "the app's containers are its own");
    let keyring = spec.volumes.as_ref().unwrap().iter().find(|v| v.name == "vd-keyring").unwrap();
    assert_eq!(keyring.secret.as_ref().unwrap().secret_name.as_deref(), Some("media-keyring"));
    assert_eq!(created.labels()[SIDECAR_OF_LABEL], "media");
    assert!(created.annotations().contains_key(SIDECAR_HASH_ANNOTATION));

    // The pod's own volume, served as file:// storage.
    let uploads = pod(
        "uploads",
        true,
        serde_json::json!({"videodelivery.dev/delivery": "media", "videodelivery.dev/media-volume": "uploads"}),
        3000,
    );
    let created = pods.create(&PostParams::default(), &uploads).await.unwrap();
    let args = inject::sidecar(&created).unwrap().args.clone().unwrap();
    assert!(args.contains(&format!("--storage=file://{}", inject::MEDIA_MOUNT)), "{args:?}");

    // A dry run is answered the same and leaves nothing behind.
    let dry = pod("dry", true, serde_json::json!({"videodelivery.dev/delivery": "media"}), 3000);
    let answer = pods.create(&PostParams { dry_run: true, ..Default::default() }, &dry).await.unwrap();
    assert!(inject::sidecar(&answer).is_some());
    assert!(pods.get_opt("dry").await.unwrap().is_none());

    // Refusals name what to fix.
    let clash = pod("clash", true, serde_json::json!({"videodelivery.dev/delivery": "media"}), 8080);
    let message = refusal(&pods, &clash).await;
    assert!(
        message.contains(
            "needs port 8080 (video), but container \"web\" uses it; set the annotation videodelivery.dev/port"
        ),
        "{message}"
    );
    let missing = pod("missing", true, serde_json::json!({"videodelivery.dev/delivery": "films"}), 3000);
    let message = refusal(&pods, &missing).await;
    assert!(message.contains(&format!("no VideoDelivery named \"films\" in namespace \"{ns}\"")), "{message}");

    // A pod that did not opt in never reaches the webhook.
    let plain = pods
        .create(
            &PostParams::default(),
            &pod("plain", false, serde_json::json!({"videodelivery.dev/delivery": "media"}), 3000),
        )
        .await
        .unwrap();
    assert!(plain.spec.as_ref().unwrap().init_containers.is_none());
    assert!(!plain.labels().contains_key(SIDECAR_OF_LABEL));

    // Status counts the sidecars, and a settings change makes them outdated.
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    // Pods are not watched: the count follows at the next reconcile, which a change to the object starts at once.
    vds.patch(
        "media",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"touch": "1"}}})),
    )
    .await
    .unwrap();
    eventually("status.sidecars = 2 pods, 0 outdated", LONG, || async {
        let s = vds.get("media").await.ok()?.status?.sidecars?;
        (s.pods == 2 && s.outdated == 0).then_some(())
    })
    .await;
    vds.patch(
        "media",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"agents": {"cacheControl": "public, max-age=60"}}})),
    )
    .await
    .unwrap();
    eventually("status.sidecars = 2 pods, 2 outdated", LONG, || async {
        let s = vds.get("media").await.ok()?.status?.sidecars?;
        (s.pods == 2 && s.outdated == 2).then_some(())
    })
    .await;

    // The operator down: opted-in pods are refused (failurePolicy Fail), the others are not affected.
    op.process.terminate(Duration::from_secs(10));
    let message =
        refusal(&pods, &pod("late", true, serde_json::json!({"videodelivery.dev/delivery": "media"}), 3000)).await;
    assert!(message.contains("failed calling webhook"), "{message}");
    pods.create(&PostParams::default(), &pod("late-plain", false, serde_json::json!({}), 3000)).await.unwrap();

    // The Secret with the CA key belongs to the configuration: deleting the configuration (as `helm uninstall`
    // does) lets the garbage collector delete the Secret, rather than leaving a private key behind.
    configs.delete(&name, &DeleteParams::default()).await.unwrap();
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    eventually("the webhook's Secret deleted with its configuration", LONG, || async {
        secrets.get_opt("videodelivery-webhook-tls").await.ok()?.is_none().then_some(())
    })
    .await;
}

/// The chart rendered as release `release` with sidecar mode on, as JSON documents.
fn render(cp: &ControlPlane, release: &str, ns: &str) -> Vec<serde_json::Value> {
    let out = Command::new(vd_testsupport::binary("helm").unwrap())
        .args(["template", release, CHART, "--namespace", ns, "--set", "sidecar.enabled=true"])
        .env("HELM_CACHE_HOME", cp.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", cp.dir().join("helm/config"))
        .env("HELM_DATA_HOME", cp.dir().join("helm/data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---")
        .filter_map(|d| serde_yaml_ng::from_str::<serde_json::Value>(d).ok())
        .filter(|d| d.is_object())
        .collect()
}

fn rules_of(docs: &[serde_json::Value], kind: &str, name: &str) -> Vec<PolicyRule> {
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name}"));
    serde_json::from_value(doc["rules"].clone()).unwrap()
}

/// Binds rules to the ServiceAccount `operator` of `ns` (the watched namespace): `watched` in a Role there,
/// `own` in a Role in `sys` (the operator's own namespace, where its Secret lives), `cluster` in a ClusterRole.
async fn grant(
    client: &Client,
    ns: &str,
    sys: &str,
    watched: Vec<PolicyRule>,
    own: Vec<PolicyRule>,
    cluster: Vec<PolicyRule>,
) {
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: "operator".into(),
        namespace: Some(ns.into()),
        ..Default::default()
    };
    let meta = |name: &str| ObjectMeta { name: Some(name.into()), ..Default::default() };
    let role_ref = |kind: &str, name: &str| RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: kind.into(),
        name: name.into(),
    };
    for (namespace, rules) in [(ns, watched), (sys, own)] {
        Api::<Role>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &Role { metadata: meta("operator"), rules: Some(rules) })
            .await
            .unwrap();
        Api::<RoleBinding>::namespaced(client.clone(), namespace)
            .create(
                &PostParams::default(),
                &RoleBinding {
                    metadata: meta("operator"),
                    role_ref: role_ref("Role", "operator"),
                    subjects: Some(vec![subject.clone()]),
                },
            )
            .await
            .unwrap();
    }
    if !cluster.is_empty() {
        Api::<ClusterRole>::all(client.clone())
            .create(
                &PostParams::default(),
                &ClusterRole { metadata: meta(ns), rules: Some(cluster), ..Default::default() },
            )
            .await
            .unwrap();
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(
                &PostParams::default(),
                &ClusterRoleBinding {
                    metadata: meta(ns),
                    role_ref: role_ref("ClusterRole", ns),
                    subjects: Some(vec![subject]),
                },
            )
            .await
            .unwrap();
    }
}

async fn within<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{what} did not happen within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What sidecar mode needs its rights for: the certificate made (create) and the bundle written (get, update of the
/// configuration), a pod injected, its count in status (list pods), and a broken certificate replaced after a
/// restart (get, update of the Secret).
#[allow(clippy::too_many_arguments)]
async fn rbac_scenario(
    cp: &ControlPlane,
    client: &Client,
    ns: &str,
    sys: &str,
    release: &str,
    watched: Vec<PolicyRule>,
    own: Vec<PolicyRule>,
    cluster: Vec<PolicyRule>,
) -> Result<(), String> {
    let docs = render(cp, release, sys);
    let configuration = format!("{release}-videodelivery-sidecar-injector");
    let secret_name = format!("{release}-videodelivery-webhook-tls");
    let port = free_port();
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut config =
        chart_webhook_configuration(cp, &configuration, &format!("https://127.0.0.1:{port}/mutate-pods"), ns);
    let chart_config = docs.iter().find(|d| d["kind"] == "MutatingWebhookConfiguration").unwrap();
    assert_eq!(chart_config["metadata"]["name"], configuration.as_str());
    config.metadata.name = Some(configuration.clone());
    configs.create(&PostParams::default(), &config).await.map_err(|e| e.to_string())?;
    grant(client, ns, sys, watched, own, cluster).await;
    common::create(client, ns, "media", "storage: {url: 's3://videos'}\nagents: {replicas: 1}").await;
    let kubeconfig = cp.kubeconfig_as(ns, "operator").await.map_err(|e| e.to_string())?;
    let flags = [
        format!("--webhook-listen=127.0.0.1:{port}"),
        "--webhook-host=127.0.0.1".into(),
        format!("--webhook-configuration={configuration}"),
        format!("--webhook-secret={secret_name}"),
        format!("--lease-namespace={sys}"),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let short = Duration::from_secs(25);
    let result = async {
        let mut op = Operator::start_with_kubeconfig(cp, &kubeconfig, ns, &flags);
        within("the CA bundle written", short, || async {
            configs.get(&configuration).await.ok()?.webhooks?.remove(0).client_config.ca_bundle
        })
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let app = pod("app", true, serde_json::json!({"videodelivery.dev/delivery": "media"}), 3000);
        let created = within("an opted-in pod admitted", short, || async {
            pods.create(&PostParams::default(), &app).await.ok()
        })
        .await?;
        inject::sidecar(&created).ok_or("no sidecar")?;
        let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), ns);
        vds.patch(
            "media",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .map_err(|e| e.to_string())?;
        within("status.sidecars.pods = 1", short, || async {
            (vds.get("media").await.ok()?.status?.sidecars?.pods == 1).then_some(())
        })
        .await?;
        op.process.terminate(Duration::from_secs(10));
        let secrets: Api<Secret> = Api::namespaced(client.clone(), sys);
        secrets
            .patch(
                &secret_name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"data": {"tls.crt": "YnJva2Vu"}})),
            )
            .await
            .map_err(|e| e.to_string())?;
        let _op = Operator::start_with_kubeconfig(cp, &kubeconfig, ns, &flags);
        within("the broken certificate replaced", short, || async {
            let s = secrets.get(&secret_name).await.ok()?;
            (s.data?.get("tls.crt")?.0 != b"broken").then_some(())
        })
        .await
    }
    .await;
    let _ = configs.delete(&configuration, &DeleteParams::default()).await;
    result
}

/// Every rule the chart adds for sidecar mode is needed: the scenario passes with the chart's rules and fails with
/// any one rule, or any one verb of it, taken away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_mode_needs_each_rule_the_chart_grants() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    // The rules a namespaced operator needs anyway (the chart's main ClusterRole), granted in full each time.
    let base = {
        let docs = render(cp, "base", "x");
        rules_of(&docs, "ClusterRole", "base-videodelivery")
    };
    // (namespaced?, rule) for each sidecar rule, in a given release's rendering.
    // (where, rule) for each sidecar rule in a release's rendering: 0 the operator's namespace, 1 the cluster,
    // 2 the watched namespace.
    let sidecar_rules = |release: &str, sys: &str| -> Vec<(u8, PolicyRule)> {
        let docs = render(cp, release, sys);
        let full = format!("{release}-videodelivery");
        let mut r: Vec<(u8, PolicyRule)> =
            rules_of(&docs, "Role", &format!("{full}-webhook")).into_iter().map(|r| (0, r)).collect();
        r.extend(rules_of(&docs, "ClusterRole", &format!("{full}-webhook")).into_iter().map(|r| (1, r)));
        r.extend(rules_of(&docs, "ClusterRole", &format!("{full}-sidecars")).into_iter().map(|r| (2, r)));
        r
    };
    let count = sidecar_rules("probe", "x").len();
    assert_eq!(count, 5, "secrets by name, secrets create, the configuration, videodeliveries, pods");
    // Variant None: all rules; Some((i, verb)): rule i without `verb` (None: without the whole rule).
    let mut variants: Vec<Option<(usize, Option<String>)>> = vec![None];
    for (i, (_, r)) in sidecar_rules("probe", "x").iter().enumerate() {
        variants.push(Some((i, None)));
        if r.verbs.len() > 1 {
            variants.extend(r.verbs.iter().map(|v| Some((i, Some(v.clone())))));
        }
    }
    let runs = variants.iter().enumerate().map(|(n, variant)| {
        let (client, base) = (client.clone(), base.clone());
        let variant = variant.clone();
        async move {
            let ns = cp.namespace("sc-rbac").await.unwrap();
            let sys = cp.namespace("sc-sys").await.unwrap();
            let release = format!("r{n}x{}", std::process::id());
            let (mut watched, mut own, mut cluster) = (base, Vec::new(), Vec::new());
            for (i, (place, mut rule)) in sidecar_rules(&release, &sys).into_iter().enumerate() {
                match &variant {
                    Some((j, None)) if *j == i => continue,
                    Some((j, Some(verb))) if *j == i => rule.verbs.retain(|v| v != verb),
                    _ => {}
                }
                match place {
                    0 => own.push(rule),
                    1 => cluster.push(rule),
                    _ => watched.push(rule),
                }
            }
            let label = match &variant {
                None => "all rules".to_string(),
                Some((i, v)) => format!("rule {i} without {}", v.as_deref().unwrap_or("all its verbs")),
            };
            (label, variant.is_none(), rbac_scenario(cp, &client, &ns, &sys, &release, watched, own, cluster).await)
        }
    });
    let mut wrong = Vec::new();
    for (label, full, result) in futures::future::join_all(runs).await {
        eprintln!("{label}: {result:?}");
        if result.is_ok() != full {
            wrong.push(format!("{label}: {result:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
