//! The Helm chart against the real API server: lint and template with every option, install, the operator running
//! with exactly the chart's RBAC through a whole scenario, each rule shown necessary, upgrade and uninstall.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{free_port, selector};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use vd_testsupport::{ControlPlane, Process};
use videodelivery_operator::crd::VideoDelivery;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/videodelivery");

fn helm(cp: &ControlPlane, args: &[&str]) -> Result<String, String> {
    let out = Command::new(vd_testsupport::binary("helm").unwrap())
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(args)
        .env("HELM_CACHE_HOME", cp.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", cp.dir().join("helm/config"))
        .env("HELM_DATA_HOME", cp.dir().join("helm/data"))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn docs(rendered: &str) -> Vec<serde_json::Value> {
    rendered
        .split("\n---")
        .filter_map(|d| serde_yaml_ng::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn find(docs: &[serde_json::Value], kind: &str) -> Vec<serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).cloned().collect()
}

#[test]
fn the_charts_crd_is_the_generated_one() {
    let top = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/videodelivery.yaml")).unwrap();
    let chart = std::fs::read_to_string(format!("{CHART}/crds/videodelivery.yaml")).unwrap();
    assert!(top == chart, "charts/videodelivery/crds/videodelivery.yaml differs from crds/: copy it over");
}

#[test]
fn lint_and_template_with_every_option() {
    let cp = ControlPlane::shared();
    let variants: &[&[&str]] = &[
        &[],
        &["--set", "watchNamespace=media"],
        &["--set", "leaderElection.enabled=false,replicas=1"],
        &["--set", "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prom"],
        &["--set", "metrics.service.enabled=false,logFormat=text"],
        &["--set", "serviceAccount.name=vd-op,serviceAccount.annotations.team=video"],
        &[
            "--set-string",
            "image.tag=1.2.3,image.pullPolicy=Always,agentImage.repository=r.example/agent,agentImage.tag=9",
        ],
        &["--set", "imagePullSecrets[0].name=regcred,nodeSelector.disk=ssd,podAnnotations.a=b"],
    ];
    for v in variants {
        helm(cp, &[&["lint", CHART][..], v].concat()).unwrap_or_else(|e| panic!("lint {v:?}: {e}"));
        let out = helm(
            cp,
            &[&["template", "vd", CHART, "--namespace", "ops", "--kube-version", vd_testsupport::K8S_VERSION][..], v]
                .concat(),
        )
        .unwrap_or_else(|e| panic!("template {v:?}: {e}"));
        let d = docs(&out);
        let dep = &find(&d, "Deployment")[0];
        let args: Vec<String> =
            serde_json::from_value(dep["spec"]["template"]["spec"]["containers"][0]["args"].clone()).unwrap();
        let pod = &dep["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"], true);
        match v.get(1).copied().unwrap_or("") {
            "watchNamespace=media" => {
                assert!(args.contains(&"--namespace=media".to_string()));
                assert!(find(&d, "ClusterRole").is_empty() && find(&d, "Role").len() == 2, "a Role in media + leases");
            }
            s if s.starts_with("leaderElection.enabled=false") => {
                assert!(!args.iter().any(|a| a == "--leader-elect"));
                assert_eq!(find(&d, "Role").len(), 0);
            }
            s if s.starts_with("metrics.serviceMonitor") => {
                assert_eq!(find(&d, "ServiceMonitor")[0]["metadata"]["labels"]["release"], "prom");
            }
            s if s.starts_with("metrics.service.enabled=false") => assert!(find(&d, "Service").is_empty()),
            s if s.starts_with("image.tag") => {
                assert_eq!(pod["containers"][0]["image"], "ghcr.io/videodelivery/operator:1.2.3");
                assert!(args.contains(&"--agent-image=r.example/agent:9".to_string()));
            }
            s if s.starts_with("serviceAccount.name") => assert_eq!(pod["serviceAccountName"], "vd-op"),
            _ => {}
        }
    }
    // A typo in values fails the install instead of being ignored.
    let err = helm(cp, &["template", "vd", CHART, "--set", "replica=3"]).unwrap_err();
    assert!(err.contains("replica"), "{err}");
    let err = helm(cp, &["template", "vd", CHART, "--set", "logFormat=xml"]).unwrap_err();
    assert!(err.contains("logFormat"), "{err}");
}

/// Polls `check` until it returns Some; an Err names what did not happen in time.
async fn wait_for<F, Fut>(what: &str, check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<()>>,
{
    wait_within(what, Duration::from_secs(20), check).await
}

/// Like [`wait_for`] with a short limit: for what only a watch can make happen that fast.
async fn wait_within<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<()>>,
{
    let polled = async {
        while check().await.is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(limit, polled).await.map_err(|_| format!("{what} did not happen within {limit:?}"))
}

/// What a user does with the operator, step by step; each step fails (Err) if the operator cannot do its part.
/// Returns at the first failure, so a missing permission shows up quickly.
async fn scenario(client: &Client, ns: &str, operator: &mut Process) -> Result<(), String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), ns);
    let creds = Secret {
        metadata: ObjectMeta { name: Some("s3".into()), ..Default::default() },
        data: Some(BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".into(), ByteString(b"id".to_vec())),
            ("AWS_SECRET_ACCESS_KEY".into(), ByteString(b"secret".to_vec())),
        ])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &creds).await.map_err(|e| e.to_string())?;
    // `a` rotates weekly (nothing is due: only watches wake the operator); `b` rotates every 8 s.
    common::create(
        client,
        ns,
        "a",
        "storage: {url: 's3://videos', credentialsSecretRef: {name: s3}}\nagents: {replicas: 2}",
    )
    .await;
    common::create(
        client,
        ns,
        "b",
        "storage: {url: 's3://videos'}\nagents: {replicas: 1}\nsigning: {rotationInterval: 8s, propagationDelay: 2s, maxTokenLifetime: 3s, clockSkew: 1s}",
    )
    .await;
    let cond = |name: &'static str, type_: &'static str, status: &'static str, reason: Option<&'static str>| {
        let vds = vds.clone();
        async move {
            let vd = vds.get(name).await.ok()?;
            let c = common::condition(&vd, type_)?;
            (c.status == status && reason.is_none_or(|r| r == c.reason)).then_some(())
        }
    };
    wait_for("a KeysReady", || cond("a", "KeysReady", "True", None)).await?;
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let has_event = |reason: &'static str, regarding: &'static str| {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
                })
                .then_some(())
        }
    };
    wait_for("a KeyCreated event", || has_event("KeyCreated", "a")).await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for("a's pods ready", || async {
        vd_testsupport::mark_pods_ready(client, ns, &selector("a")).await.ok()?;
        (deployments.get("a-agent").await.ok()?.status?.ready_replicas? == 2).then_some(())
    })
    .await?;
    wait_for("a Ready", || cond("a", "Ready", "True", Some("Ready"))).await?;

    // Watches, not timers, bring the operator back: the check allows 3 s after a quiet moment, while
    // nothing is due for `a` for a week.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Someone scales the agents by hand; the operator puts its replica count back.
    let manual = serde_json::json!({"spec": {"replicas": 5}});
    deployments.patch("a-agent", &PatchParams::default(), &Patch::Merge(&manual)).await.map_err(|e| e.to_string())?;
    wait_within("replicas restored", Duration::from_secs(3), || async {
        (deployments.get("a-agent").await.ok()?.spec?.replicas? == 2).then_some(())
    })
    .await?;

    wait_for("b rotated", || has_event("KeyPromoted", "b")).await?;

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let scale = serde_json::json!({"spec": {"agents": {"replicas": null, "autoscaling": {"minReplicas": 1, "maxReplicas": 3}}}});
    vds.patch("a", &PatchParams::default(), &Patch::Merge(&scale)).await.map_err(|e| e.to_string())?;
    wait_for("HPA made, PDB removed", || async {
        (hpas.get_opt("a-agent").await.ok()?.is_some() && pdbs.get_opt("a-agent").await.ok()?.is_none()).then_some(())
    })
    .await?;
    let fixed = serde_json::json!({"spec": {"agents": {"replicas": 1, "autoscaling": null}}});
    vds.patch("a", &PatchParams::default(), &Patch::Merge(&fixed)).await.map_err(|e| e.to_string())?;
    wait_for("HPA removed", || async { hpas.get_opt("a-agent").await.ok()?.is_none().then_some(()) }).await?;

    // Let the scale-down settle: the controller manager writes the Deployment's status while pods come and go, and
    // each write wakes the operator, which would hide a missing Secret watch.
    wait_for("a settled at one ready agent", || async {
        vd_testsupport::mark_pods_ready(client, ns, &selector("a")).await.ok()?;
        let d = deployments.get("a-agent").await.ok()?;
        let s = d.status?;
        (s.replicas? == 1 && s.ready_replicas? == 1 && s.observed_generation == d.metadata.generation).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A broken keyring is reported at once (only the Secret watch can see it that fast), and the repeated event is
    // counted.
    let broken = serde_json::json!({"data": {"keyring.json": "e30="}});
    secrets.patch("a-keyring", &PatchParams::default(), &Patch::Merge(&broken)).await.map_err(|e| e.to_string())?;
    wait_within("KeyringInvalid", Duration::from_secs(3), || cond("a", "KeysReady", "False", Some("KeyringInvalid")))
        .await?;
    let touch = serde_json::json!({"metadata": {"annotations": {"touched": "1"}}});
    vds.patch("a", &PatchParams::default(), &Patch::Merge(&touch)).await.map_err(|e| e.to_string())?;
    wait_for("a repeated event counted", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("KeyringInvalid") && e.series.as_ref().is_some_and(|s| s.count >= 2))
            .then_some(())
    })
    .await?;
    secrets.delete("a-keyring", &DeleteParams::default()).await.map_err(|e| e.to_string())?;
    wait_for("a new keyring", || cond("a", "KeysReady", "True", None)).await?;

    if let Ok(Some(status)) = operator.try_wait() {
        return Err(format!("the operator exited ({status})"));
    }
    Ok(())
}

fn operator_cmd(kubeconfig: &Path, args: &[String], namespace: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_videodelivery-operator"));
    cmd.env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", namespace)
        .env("POD_NAME", "operator-0")
        .env("RUST_LOG", std::env::var("VD_OPERATOR_LOG").unwrap_or_else(|_| "info".into()))
        .args(args)
        .arg(format!("--admin-listen=127.0.0.1:{}", free_port()));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_chart_runs_the_operator_with_exactly_enough_rights() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let system = cp.namespace("vd-system").await.unwrap();
    let apps = cp.namespace("apps").await.unwrap();
    helm(cp, &["install", "videodelivery", CHART, "--namespace", &system, "--set", "leaderElection.leaseDuration=6s"])
        .unwrap();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &system);
    let dep = deployments.get("videodelivery").await.unwrap();
    assert_eq!(dep.spec.as_ref().unwrap().replicas, Some(2));
    assert!(
        Api::<ServiceAccount>::namespaced(client.clone(), &system).get_opt("videodelivery").await.unwrap().is_some()
    );
    assert!(Api::<ClusterRole>::all(client.clone()).get_opt("videodelivery").await.unwrap().is_some());
    assert!(Api::<ClusterRoleBinding>::all(client.clone()).get_opt("videodelivery").await.unwrap().is_some());
    assert!(
        Api::<Role>::namespaced(client.clone(), &system)
            .get_opt("videodelivery-leader-election")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        Api::<Service>::namespaced(client.clone(), &system).get_opt("videodelivery-metrics").await.unwrap().is_some()
    );

    // Run the operator as the chart's pod would: its args, its ServiceAccount's token.
    let args = dep.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    let kubeconfig = cp.kubeconfig_as(&system, "videodelivery").await.unwrap();
    let mut op =
        Process::spawn(operator_cmd(&kubeconfig, &args, &system), cp.dir().join("chart-operator.log")).unwrap();
    if let Err(e) = scenario(&client, &apps, &mut op).await {
        panic!("with the chart's role: {e}\noperator log:\n{}", op.log());
    }
    drop(op);

    // Each permission is needed: take one verb away at a time and the same scenario fails. The role is the
    // chart's own, rendered by helm; each variant runs in its own namespace in namespaced mode, several at once.
    let rendered = helm(
        cp,
        &["template", "videodelivery", CHART, "--namespace", &system, "--kube-version", vd_testsupport::K8S_VERSION],
    )
    .unwrap();
    let d = docs(&rendered);
    let mut rules: Vec<PolicyRule> = serde_json::from_value(find(&d, "ClusterRole")[0]["rules"].clone()).unwrap();
    rules.extend(serde_json::from_value::<Vec<PolicyRule>>(find(&d, "Role")[0]["rules"].clone()).unwrap());
    // Variants: each whole rule removed, and each verb of it alone. `list` and `watch` go together: the watcher
    // re-lists when a watch is refused, so either alone still sees changes (late), and only the pair is a
    // deterministic test.
    let mut variants = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let resources = r.resources.as_ref().unwrap().join(",");
        let mut without = |label: String, drop: &[&str]| {
            // VD_ABLATE=<text> runs only the variants whose label contains it (for debugging one rule).
            if std::env::var("VD_ABLATE").is_ok_and(|only| !label.contains(&only)) {
                return;
            }
            let mut fewer = rules.clone();
            fewer[i].verbs.retain(|v| !drop.contains(&v.as_str()));
            if fewer[i].verbs.is_empty() {
                fewer.remove(i);
            }
            variants.push((label, fewer));
        };
        let all: Vec<&str> = r.verbs.iter().map(String::as_str).collect();
        without(format!("the rule for {resources}"), &all);
        if all.len() > 1 {
            for v in &all {
                if *v != "watch" {
                    let drop: &[&str] = if *v == "list" { &["list", "watch"] } else { &[v] };
                    without(format!("{} {resources}", drop.join("+")), drop);
                }
            }
        }
    }
    assert!(variants.len() >= 20 || std::env::var("VD_ABLATE").is_ok(), "{} rules", variants.len());
    let mut unused = Vec::new();
    for batch in variants.chunks(6) {
        let runs = batch.iter().map(|(label, fewer)| {
            let client = client.clone();
            async move {
                let ns = cp.namespace("ablate").await.unwrap();
                grant(&client, &ns, fewer).await;
                let kubeconfig = cp.kubeconfig_as(&ns, "operator").await.unwrap();
                let args: Vec<String> = ["--leader-elect", "--lease-duration=6s", "--lease-name=vd"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([format!("--namespace={ns}"), format!("--lease-namespace={ns}")])
                    .collect();
                let log = std::env::temp_dir().join(format!("ablate-{ns}.log"));
                let mut op = Process::spawn(operator_cmd(&kubeconfig, &args, &ns), log).unwrap();
                let result = scenario(&client, &ns, &mut op).await;
                (label.clone(), result)
            }
        });
        for (label, result) in futures::future::join_all(runs).await {
            match result {
                Ok(()) => unused.push(label),
                Err(e) => eprintln!("without {label}: {e}"),
            }
        }
    }
    assert!(unused.is_empty(), "the scenario passed without these permissions: {unused:?}");
}

/// A Role with `rules` in `ns` bound to the ServiceAccount `operator` there: the chart's namespaced mode.
async fn grant(client: &Client, ns: &str, rules: &[PolicyRule]) {
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let role = Role {
        metadata: ObjectMeta { name: Some("operator".into()), ..Default::default() },
        rules: Some(rules.to_vec()),
    };
    roles.create(&PostParams::default(), &role).await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let binding = RoleBinding {
        metadata: ObjectMeta { name: Some("operator".into()), ..Default::default() },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "operator".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "operator".into(),
            namespace: Some(ns.into()),
            ..Default::default()
        }]),
    };
    bindings.create(&PostParams::default(), &binding).await.unwrap();
}

#[tokio::test]
async fn upgrade_and_uninstall_leave_only_the_crd() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let system = cp.namespace("vd-upgrade").await.unwrap();
    helm(cp, &["install", "vdu", CHART, "--namespace", &system]).unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), &system);
    assert!(services.get_opt("vdu-videodelivery-metrics").await.unwrap().is_some());

    helm(
        cp,
        &[
            "upgrade",
            "vdu",
            CHART,
            "--namespace",
            &system,
            "--set",
            &format!("replicas=1,metrics.service.enabled=false,watchNamespace={system}"),
        ],
    )
    .unwrap();
    assert!(services.get_opt("vdu-videodelivery-metrics").await.unwrap().is_none(), "disabled Service removed");
    let dep = Api::<Deployment>::namespaced(client.clone(), &system).get("vdu-videodelivery").await.unwrap();
    assert_eq!(dep.spec.as_ref().unwrap().replicas, Some(1));
    assert!(Api::<ClusterRole>::all(client.clone()).get_opt("vdu-videodelivery").await.unwrap().is_none());
    assert!(Api::<Role>::namespaced(client.clone(), &system).get_opt("vdu-videodelivery").await.unwrap().is_some());

    helm(cp, &["uninstall", "vdu", "--namespace", &system, "--wait"]).unwrap();
    let by_release = ListParams::default().labels("app.kubernetes.io/instance=vdu");
    let left = Api::<Deployment>::namespaced(client.clone(), &system).list(&by_release).await.unwrap().items.len()
        + Api::<ServiceAccount>::namespaced(client.clone(), &system).list(&by_release).await.unwrap().items.len()
        + Api::<Role>::namespaced(client.clone(), &system).list(&by_release).await.unwrap().items.len()
        + Api::<RoleBinding>::namespaced(client.clone(), &system).list(&by_release).await.unwrap().items.len()
        + Api::<ClusterRole>::all(client.clone()).list(&by_release).await.unwrap().items.len()
        + Api::<ClusterRoleBinding>::all(client.clone()).list(&by_release).await.unwrap().items.len()
        + services.list(&by_release).await.unwrap().items.len();
    assert_eq!(left, 0, "uninstall leaves nothing of the release");
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt("videodeliveries.videodelivery.dev")
        .await
        .unwrap();
    assert!(crd.is_some_and(|c| c.name_any() == "videodeliveries.videodelivery.dev"), "the CRD is kept, as Helm does");
}
