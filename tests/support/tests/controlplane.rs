//! The control plane is real: objects persist in etcd, controllers act on them, RBAC is enforced.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use vd_testsupport::ControlPlane;

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), ..Default::default() }
}

#[tokio::test]
async fn deployments_get_replicasets_and_pods_and_are_garbage_collected() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("gc").await.unwrap();
    let client = cp.client().await.unwrap();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let data = BTreeMap::from([("k".to_owned(), k8s_openapi::ByteString(b"v".to_vec()))]);
    secrets
        .create(&PostParams::default(), &Secret { metadata: meta("s"), data: Some(data), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(secrets.get("s").await.unwrap().data.unwrap()["k"].0, b"v");

    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    let deploy = Deployment {
        metadata: meta("web"),
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "web".into(),
                        image: Some("example/web:1".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments.create(&PostParams::default(), &deploy).await.unwrap();

    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    eventually("a ReplicaSet for the Deployment", || async {
        !rs.list(&ListParams::default()).await.unwrap().items.is_empty()
    })
    .await;
    // No nodes run here, so the Pods stay Pending, but the ReplicaSet controller creates them.
    eventually("two Pods", || async { pods.list(&ListParams::default()).await.unwrap().items.len() == 2 }).await;

    deployments.delete("web", &DeleteParams::background()).await.unwrap();
    eventually("garbage collection of the ReplicaSet and Pods", || async {
        rs.list(&ListParams::default()).await.unwrap().items.is_empty()
            && pods
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .all(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await;
}

#[tokio::test]
async fn rbac_is_enforced_for_service_accounts() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("rbac").await.unwrap();
    let as_sa = cp.client_as(&ns, "reader").await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(as_sa, &ns);
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("a ServiceAccount without a role must be refused, got {other:?}"),
    }

    let admin = cp.client().await.unwrap();
    let role = Role {
        metadata: meta("secret-reader"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["list".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &role).await.unwrap();
    let binding = RoleBinding {
        metadata: meta("reader"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "secret-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some(ns.clone()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin, &ns).create(&PostParams::default(), &binding).await.unwrap();
    eventually("the role to take effect", || async { secrets.list(&ListParams::default()).await.is_ok() }).await;
}

#[tokio::test]
async fn kubectl_works_with_the_kubeconfig() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("kubectl").await.unwrap();
    let out = std::process::Command::new(vd_testsupport::binary("kubectl").unwrap())
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(["get", "namespace", &ns, "-o", "name"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("namespace/{ns}"));
    let version = std::process::Command::new(vd_testsupport::binary("kubectl").unwrap())
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(["version", "-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&version.stdout).unwrap();
    assert_eq!(v["serverVersion"]["gitVersion"], vd_testsupport::K8S_VERSION, "versions are stamped");
}

fn helm(cp: &ControlPlane, args: &[&str]) -> String {
    let out = std::process::Command::new(vd_testsupport::binary("helm").unwrap())
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(args)
        .env("HELM_CACHE_HOME", cp.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", cp.dir().join("helm/config"))
        .env("HELM_DATA_HOME", cp.dir().join("helm/data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "helm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_a_chart() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("helm").await.unwrap();
    let chart = tempfile::tempdir().unwrap();
    std::fs::create_dir(chart.path().join("templates")).unwrap();
    std::fs::write(chart.path().join("Chart.yaml"), "apiVersion: v2\nname: probe\nversion: 0.1.0\n").unwrap();
    std::fs::write(chart.path().join("values.yaml"), "greeting: hello\n").unwrap();
    std::fs::write(
        chart.path().join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\ndata:\n  greeting: {{ .Values.greeting | quote }}\n",
    )
    .unwrap();
    let path = chart.path().to_str().unwrap();

    helm(cp, &["install", "probe", path, "--namespace", &ns, "--wait", "--timeout", "60s"]);
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(cp.client().await.unwrap(), &ns);
    assert_eq!(cms.get("probe-cm").await.unwrap().data.unwrap()["greeting"], "hello");

    helm(cp, &["upgrade", "probe", path, "--namespace", &ns, "--set", "greeting=bonjour"]);
    assert_eq!(cms.get("probe-cm").await.unwrap().data.unwrap()["greeting"], "bonjour");
    let history = helm(cp, &["history", "probe", "--namespace", &ns, "-o", "json"]);
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "two revisions: {history}");

    helm(cp, &["uninstall", "probe", "--namespace", &ns, "--wait"]);
    assert!(cms.get_opt("probe-cm").await.unwrap().is_none(), "uninstall removes the ConfigMap");
    // Helm keeps its release records in Secrets; uninstall removes them too.
    let secrets: Api<Secret> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let left = secrets.list(&ListParams::default().labels("owner=helm")).await.unwrap();
    assert!(left.items.is_empty(), "helm release secrets left behind");
}
