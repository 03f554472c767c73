//! Sidecar mode against the real API server: the API server calls the operator's webhook (a process on this host)
//! through the chart's own MutatingWebhookConfiguration, with its clientConfig pointed at 127.0.0.1 because the
//! chart's Service form needs a node to route it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Operator, eventually, free_port};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
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

    configs.delete(&name, &DeleteParams::default()).await.unwrap();
}
