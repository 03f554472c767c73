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
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use vd_testsupport::{ControlPlane, Process};
use vd_token::duration::GoDuration;
use videodelivery_operator::crd::{SigningFloors, VideoDelivery, crd_with_floors};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/videodelivery");

fn helm(cp: &ControlPlane, args: &[&str]) -> Result<String, String> {
    let out = helm_output(cp, args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn helm_output(cp: &ControlPlane, args: &[&str]) -> std::process::Output {
    Command::new(vd_testsupport::binary("helm").unwrap())
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(args)
        .env("HELM_CACHE_HOME", cp.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", cp.dir().join("helm/config"))
        .env("HELM_DATA_HOME", cp.dir().join("helm/data"))
        .output()
        .unwrap()
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

/// The namespace `helm template` renders into.
const TEMPLATE_NS: &str = "ops";

fn template(cp: &ControlPlane, release: &str, sets: &[&str]) -> Result<String, String> {
    helm(cp, &[&["template", release, CHART, "--namespace", TEMPLATE_NS][..], sets].concat())
}

/// Lowers every signing floor to 1 s: the documented lab/test setting, and what the scenario's 8 s rotation needs.
const TEST_FLOORS: &str =
    "signingFloors.propagationDelay=1s,signingFloors.tokenLifetime=1s,signingFloors.rotationInterval=1s";

#[test]
fn the_charts_crd_template_is_generated_from_the_types() {
    let out = Command::new(env!("CARGO_BIN_EXE_crdgen")).arg("--chart").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let committed = std::fs::read_to_string(format!("{CHART}/templates/crd.yaml")).unwrap();
    assert!(
        committed == String::from_utf8(out.stdout).unwrap(),
        "charts/videodelivery/templates/crd.yaml is stale: run \
         `cargo run -p videodelivery-operator --bin crdgen -- --chart > charts/videodelivery/templates/crd.yaml`"
    );

    // Rendered back, the template is the CRD crdgen prints (the one under crds/), floors and all.
    let cp = ControlPlane::shared();
    let rendered = |sets: &str| {
        let out = template(cp, "vd", &["--show-only", "templates/crd.yaml", "--set", sets]).unwrap();
        let d = docs(&out);
        assert_eq!(d.len(), 1, "{out}");
        d[0].clone()
    };
    let generated = |floors: &SigningFloors| serde_json::to_value(crd_with_floors(floors)).unwrap();
    assert_eq!(rendered("crds.keep=false"), generated(&SigningFloors::default()));
    assert_eq!(rendered(&format!("crds.keep=false,{TEST_FLOORS}")), generated(&common::test_floors()));
    let odd = SigningFloors {
        propagation_delay: GoDuration::from_secs(2 * 60 + 5),
        token_lifetime: GoDuration::from_secs(3 * 3600),
        rotation_interval: GoDuration::from_secs(26 * 3600 + 61),
    };
    let sets = "crds.keep=false,signingFloors.propagationDelay=2m5s,signingFloors.tokenLifetime=3h,\
                signingFloors.rotationInterval=26h1m1s";
    assert_eq!(rendered(sets), generated(&odd));
    // By default the CRD outlives the release.
    let mut kept = generated(&SigningFloors::default());
    kept["metadata"]["annotations"] = serde_json::json!({"helm.sh/resource-policy": "keep"});
    assert_eq!(rendered("crds.enabled=true"), kept);
}

/// The objects of one rendering, with the checks every rendering must pass: names derived from one full name,
/// and every reference (selectors, role bindings, the ServiceAccount, the Lease) pointing at what the chart made.
struct Rendered {
    docs: Vec<serde_json::Value>,
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<serde_json::Value> {
        find(&self.docs, kind)
    }
    fn one(&self, kind: &str) -> serde_json::Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "one {kind}");
        all[0].clone()
    }
    fn pod(&self) -> serde_json::Value {
        self.one("Deployment")["spec"]["template"].clone()
    }
    fn args(&self) -> Vec<String> {
        serde_json::from_value(self.pod()["spec"]["containers"][0]["args"].clone()).unwrap()
    }
    fn has_arg(&self, arg: &str) -> bool {
        self.args().iter().any(|a| a == arg)
    }

    fn check_consistent(&self, fullname: &str) {
        let pod = self.pod();
        let labels = pod["metadata"]["labels"].as_object().unwrap().clone();
        let selects_pods = |what: &str, selector: &serde_json::Value| {
            let selector = selector.as_object().unwrap_or_else(|| panic!("{what} has no selector"));
            assert!(!selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "{what}");
        };
        for d in &self.docs {
            let (kind, name) = (d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap());
            // The CRD's name is the API's; serviceAccount.name may name the ServiceAccount.
            let named_elsewhere =
                kind == "CustomResourceDefinition" || (kind == "ServiceAccount" && !name.starts_with(fullname));
            if !named_elsewhere {
                assert!(name == fullname || name.starts_with(&format!("{fullname}-")), "{kind} {name}: not {fullname}");
                assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/instance"], labels["app.kubernetes.io/instance"]);
            }
        }
        let dep = self.one("Deployment");
        assert_eq!(dep["metadata"]["name"], fullname);
        selects_pods("the Deployment", &dep["spec"]["selector"]["matchLabels"]);
        for svc in self.all("Service") {
            selects_pods("the metrics Service", &svc["spec"]["selector"]);
        }
        for pdb in self.all("PodDisruptionBudget") {
            selects_pods("the PodDisruptionBudget", &pdb["spec"]["selector"]["matchLabels"]);
        }
        for c in pod["spec"]["topologySpreadConstraints"].as_array().into_iter().flatten() {
            selects_pods("a topology spread constraint", &c["labelSelector"]["matchLabels"]);
        }
        let sa = pod["spec"]["serviceAccountName"].as_str().unwrap();
        for made in self.all("ServiceAccount") {
            assert_eq!(made["metadata"]["name"], sa);
        }
        for kind in ["RoleBinding", "ClusterRoleBinding"] {
            for b in self.all(kind) {
                let role = b["roleRef"]["name"].as_str().unwrap();
                let role_kind = b["roleRef"]["kind"].as_str().unwrap();
                assert!(self.all(role_kind).iter().any(|r| r["metadata"]["name"] == role), "{kind} to {role}");
                assert_eq!(b["subjects"][0]["name"], sa, "{kind} {role} binds the pods' ServiceAccount");
                assert_eq!(b["subjects"][0]["namespace"], TEMPLATE_NS);
            }
        }
        if self.has_arg("--leader-elect") {
            assert!(self.has_arg(&format!("--lease-name={fullname}")));
        }
    }
}

#[test]
fn lint_and_template_with_every_option() {
    let cp = ControlPlane::shared();
    type Check = fn(&Rendered);
    // (release, --set values, the full name every object is named after, what a user sees).
    let cases: &[(&str, &[&str], &str, Check)] = &[
        ("vd", &[], "vd-videodelivery", |r| {
            // The defaults: two replicas under leader election, a PDB, spread over nodes and zones, the CRD kept,
            // production floors on both the CRD and the operator. Names as they always were.
            assert_eq!(r.one("Deployment")["spec"]["replicas"], 2);
            assert_eq!(r.pod()["metadata"]["labels"]["app.kubernetes.io/name"], "videodelivery-operator");
            assert!(r.has_arg("--leader-elect") && r.has_arg("--lease-duration=15s"));
            assert_eq!(r.one("Role")["metadata"]["name"], "vd-videodelivery-leader-election");
            assert_eq!(r.one("Service")["metadata"]["name"], "vd-videodelivery-metrics");
            assert_eq!(r.one("ServiceAccount")["metadata"]["name"], "vd-videodelivery");
            assert_eq!(r.one("PodDisruptionBudget")["spec"]["minAvailable"], 1);
            let spread = r.pod()["spec"]["topologySpreadConstraints"].clone();
            let keys: Vec<&str> =
                spread.as_array().unwrap().iter().map(|c| c["topologyKey"].as_str().unwrap()).collect();
            assert_eq!(keys, ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]);
            assert!(spread.as_array().unwrap().iter().all(|c| c["whenUnsatisfiable"] == "ScheduleAnyway"));
            for a in ["--min-propagation-delay=2m", "--min-token-lifetime=1m", "--min-rotation-interval=1h"] {
                assert!(r.has_arg(a), "{a}");
            }
            let crd = r.one("CustomResourceDefinition");
            assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
        }),
        // A release named after the chart is not repeated.
        ("videodelivery", &[], "videodelivery", |r| {
            assert_eq!(r.one("Service")["metadata"]["name"], "videodelivery-metrics");
        }),
        ("vd", &["--set", "watchNamespace=media"], "vd-videodelivery", |r| {
            assert!(r.has_arg("--namespace=media"));
            assert!(r.all("ClusterRole").is_empty() && r.all("Role").len() == 2, "a Role in media + leases");
        }),
        ("vd", &["--set", "leaderElection.enabled=false,replicas=1"], "vd-videodelivery", |r| {
            assert!(!r.has_arg("--leader-elect"));
            assert!(r.all("Role").is_empty());
            // One replica: nothing to spread, and a PDB would block every drain.
            assert!(r.all("PodDisruptionBudget").is_empty());
            assert!(r.pod()["spec"]["topologySpreadConstraints"].is_null());
        }),
        (
            "vd",
            &["--set", "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prom"],
            "vd-videodelivery",
            |r| {
                let sm = r.one("ServiceMonitor");
                assert_eq!(sm["metadata"]["labels"]["release"], "prom");
                let svc = r.one("Service");
                for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
                    assert_eq!(&svc["metadata"]["labels"][k], v, "the ServiceMonitor selects the metrics Service");
                }
            },
        ),
        ("vd", &["--set", "metrics.service.enabled=false,logFormat=text"], "vd-videodelivery", |r| {
            assert!(r.all("Service").is_empty());
            assert!(r.has_arg("--log-format=text"));
        }),
        (
            "vd",
            &["--set", "serviceAccount.name=vd-op,serviceAccount.annotations.team=video"],
            "vd-videodelivery",
            |r| {
                assert_eq!(r.pod()["spec"]["serviceAccountName"], "vd-op");
                assert_eq!(r.one("ServiceAccount")["metadata"]["annotations"]["team"], "video");
            },
        ),
        (
            "vd",
            &["--set", "serviceAccount.create=false,serviceAccount.name=platform-operator"],
            "vd-videodelivery",
            |r| {
                assert!(r.all("ServiceAccount").is_empty(), "an existing ServiceAccount is used, not made");
                assert_eq!(r.pod()["spec"]["serviceAccountName"], "platform-operator");
            },
        ),
        (
            "vd",
            &[
                "--set-string",
                "image.tag=1.2.3,image.pullPolicy=Always,agentImage.repository=r.example/agent,agentImage.tag=9",
            ],
            "vd-videodelivery",
            |r| {
                assert_eq!(r.pod()["spec"]["containers"][0]["image"], "ghcr.io/videodelivery/operator:1.2.3");
                assert!(r.has_arg("--agent-image=r.example/agent:9"));
            },
        ),
        (
            "vd",
            &["--set", "imagePullSecrets[0].name=regcred,nodeSelector.disk=ssd,podAnnotations.a=b"],
            "vd-videodelivery",
            |r| {
                assert_eq!(r.pod()["spec"]["imagePullSecrets"][0]["name"], "regcred");
                assert_eq!(r.pod()["spec"]["nodeSelector"]["disk"], "ssd");
            },
        ),
        ("vd", &["--set", "crds.enabled=false"], "vd-videodelivery", |r| {
            assert!(r.all("CustomResourceDefinition").is_empty());
        }),
        ("vd", &["--set", "crds.keep=false"], "vd-videodelivery", |r| {
            assert!(r.one("CustomResourceDefinition")["metadata"]["annotations"].is_null());
        }),
        ("vd", &["--set", "nameOverride=media"], "vd-media", |r| {
            assert_eq!(r.pod()["metadata"]["labels"]["app.kubernetes.io/name"], "media-operator");
            assert_eq!(r.one("Role")["metadata"]["name"], "vd-media-leader-election");
            assert_eq!(r.one("Service")["metadata"]["name"], "vd-media-metrics");
        }),
        ("vd", &["--set", "fullnameOverride=video-ops"], "video-ops", |r| {
            assert_eq!(r.one("ClusterRole")["metadata"]["name"], "video-ops");
            assert_eq!(r.one("ServiceAccount")["metadata"]["name"], "video-ops");
            assert_eq!(r.one("PodDisruptionBudget")["metadata"]["name"], "video-ops");
            // The CRD's name is the API's, never the release's.
            assert_eq!(r.one("CustomResourceDefinition")["metadata"]["name"], "videodeliveries.videodelivery.dev");
        }),
        ("vd", &["--set", "replicas=3,podDisruptionBudget.minAvailable=2"], "vd-videodelivery", |r| {
            assert_eq!(r.one("PodDisruptionBudget")["spec"]["minAvailable"], 2);
            assert!(r.has_arg("--leader-elect"));
        }),
        ("vd", &["--set", "podDisruptionBudget.enabled=false"], "vd-videodelivery", |r| {
            assert!(r.all("PodDisruptionBudget").is_empty());
            assert!(r.pod()["spec"]["topologySpreadConstraints"].is_array());
        }),
        (
            "vd",
            &[
                "--set",
                "topologySpreadConstraints[0].topologyKey=rack,topologySpreadConstraints[0].maxSkew=2,\
                 topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule,\
                 topologySpreadConstraints[0].labelSelector.matchLabels.app\\.kubernetes\\.io/instance=vd",
            ],
            "vd-videodelivery",
            |r| {
                let spread = r.pod()["spec"]["topologySpreadConstraints"].clone();
                assert_eq!(spread.as_array().unwrap().len(), 1, "given constraints replace the default");
                assert_eq!(spread[0]["topologyKey"], "rack");
            },
        ),
        ("vd", &["--set", TEST_FLOORS], "vd-videodelivery", |r| {
            for a in ["--min-propagation-delay=1s", "--min-token-lifetime=1s", "--min-rotation-interval=1s"] {
                assert!(r.has_arg(a), "{a}");
            }
            let crd = serde_yaml_ng::to_string(&r.one("CustomResourceDefinition")).unwrap();
            assert!(crd.contains("duration(self.rotationInterval) >= duration('1s')"), "{crd}");
        }),
    ];
    for (release, sets, fullname, check) in cases {
        helm(cp, &[&["lint", "--strict", CHART][..], sets].concat())
            .unwrap_or_else(|e| panic!("lint --strict {sets:?}: {e}"));
        // No --kube-version: the test helm is stamped with its Kubernetes version, as released helm is.
        let out = template(cp, release, sets).unwrap_or_else(|e| panic!("template {sets:?}: {e}"));
        let r = Rendered { docs: docs(&out) };
        let pod = r.pod();
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"], true);
        r.check_consistent(fullname);
        check(&r);
    }
}

#[test]
fn bad_values_are_refused_with_a_readable_message() {
    let cp = ControlPlane::shared();
    let cases = [
        // A typo fails the install instead of being ignored.
        ("replica=3", "additional properties 'replica' not allowed"),
        ("logFormat=xml", "at '/logFormat'"),
        ("signingFloors.rotationInterval=1ms", "at '/signingFloors/rotationInterval': '1ms' does not match pattern"),
        ("signingFloors.propagationDelay=1.5m", "at '/signingFloors/propagationDelay'"),
        ("crds.enabled=yes", "at '/crds/enabled'"),
        ("nameOverride=Video_Ops", "at '/nameOverride'"),
        ("fullnameOverride=ops.example", "at '/fullnameOverride'"),
        ("podDisruptionBudget.minAvailable=-1", "at '/podDisruptionBudget/minAvailable'"),
        ("serviceAccount.create=nope", "at '/serviceAccount/create'"),
        ("topologySpreadConstraints[0].maxSkew=1", "missing properties 'topologyKey', 'whenUnsatisfiable'"),
        // Rules across values, from the templates.
        (
            "replicas=2,leaderElection.enabled=false",
            "replicas=2 needs leaderElection.enabled=true: without it every replica reconciles at once",
        ),
        ("serviceAccount.create=false", "serviceAccount.create=false needs serviceAccount.name"),
        (
            "replicas=3,podDisruptionBudget.minAvailable=3",
            "podDisruptionBudget.minAvailable=3 must be below replicas=3",
        ),
    ];
    for (sets, expected) in cases {
        let err = template(cp, "vd", &["--set", sets]).expect_err(sets);
        assert!(err.contains(expected), "{sets}: {err:?} lacks {expected:?}");
        let lint = helm_output(cp, &["lint", "--strict", CHART, "--set", sets]);
        if expected.starts_with("at '") || expected.contains("propert") {
            assert!(!lint.status.success(), "lint --strict accepts {sets}");
        } else {
            // helm lint reports a template's `fail` without failing (lint mode renders on past it); the message is
            // still there for the user, and install and template fail on it.
            assert!(String::from_utf8_lossy(&lint.stderr).contains(expected), "lint {sets}: {lint:?}");
        }
    }
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
    // nothing is due for `a` for a week. The quiet moment is long enough for the status writes of `a` becoming
    // Ready to have woken (and finished) their own reconciles, even on a loaded machine.
    tokio::time::sleep(Duration::from_secs(5)).await;
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
    // A deleted keyring is made again (create-only), pending until agents can have it.
    secrets.delete("a-keyring", &DeleteParams::default()).await.map_err(|e| e.to_string())?;
    wait_for("a new keyring", || cond("a", "KeysReady", "False", Some("KeyringRecreated"))).await?;

    // The agents' NetworkPolicy and PodMonitor: made, restored by the watch when deleted by hand, and removed. On
    // `a`, which nothing else wakes now (its new key is pending for two minutes), so only the watch can restore.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let monitors: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &videodelivery_operator::resources::pod_monitor_api_resource());
    let on = serde_json::json!({"spec": {"agents": {"networkPolicy": {"enabled": true}, "metrics": {"podMonitor": {"enabled": true}}}}});
    vds.patch("a", &PatchParams::default(), &Patch::Merge(&on)).await.map_err(|e| e.to_string())?;
    wait_for("NetworkPolicy and PodMonitor made", || async {
        (policies.get_opt("a-agent").await.ok()?.is_some() && monitors.get_opt("a-agent").await.ok()?.is_some())
            .then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    policies.delete("a-agent", &DeleteParams::default()).await.map_err(|e| e.to_string())?;
    wait_within("NetworkPolicy restored", Duration::from_secs(3), || async {
        policies.get_opt("a-agent").await.ok()?.map(drop)
    })
    .await?;
    let off = serde_json::json!({"spec": {"agents": {"networkPolicy": {"enabled": false}, "metrics": {"podMonitor": {"enabled": false}}}}});
    vds.patch("a", &PatchParams::default(), &Patch::Merge(&off)).await.map_err(|e| e.to_string())?;
    wait_for("NetworkPolicy and PodMonitor removed", || async {
        (policies.get_opt("a-agent").await.ok()?.is_none() && monitors.get_opt("a-agent").await.ok()?.is_none())
            .then_some(())
    })
    .await?;

    // spec.expose: an HTTPRoute to an HTTPS listener (status.url says https only if the Gateway can be read), then an
    // Ingress instead (the route deleted), then nothing (the Ingress deleted).
    common::create_gateway(client, ns, "public").await;
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &videodelivery_operator::resources::http_route_api_resource());
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let gateway = serde_json::json!({"spec": {"expose": {"gateway": {"parentRefs": [{"name": "public"}], "hostnames": ["v.example.com"]}}}});
    vds.patch("a", &PatchParams::default(), &Patch::Merge(&gateway)).await.map_err(|e| e.to_string())?;
    wait_for("HTTPRoute made", || async { routes.get_opt("a").await.ok()?.map(drop) }).await?;
    // The URL is public once the Gateway accepts the route (written here as its controller would).
    common::gateway_says(&routes, "a", "True", "Accepted", "").await;
    wait_for("status.url https once accepted", || async {
        let url = vds.get("a").await.ok()?.status?.url?;
        (url == "https://v.example.com/videos/").then_some(())
    })
    .await?;
    let ingress = serde_json::json!({"spec": {"expose": {"gateway": null, "ingress": {"host": "v.example.com"}}}});
    vds.patch("a", &PatchParams::default(), &Patch::Merge(&ingress)).await.map_err(|e| e.to_string())?;
    wait_for("Ingress made, HTTPRoute removed", || async {
        (ingresses.get_opt("a").await.ok()?.is_some() && routes.get_opt("a").await.ok()?.is_none()).then_some(())
    })
    .await?;
    let none = serde_json::json!({"spec": {"expose": null}});
    vds.patch("a", &PatchParams::default(), &Patch::Merge(&none)).await.map_err(|e| e.to_string())?;
    wait_for("Ingress removed", || async { ingresses.get_opt("a").await.ok()?.is_none().then_some(()) }).await?;

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

/// The CRD is one per cluster, and releases that install it (crds.enabled) take it over from each other and set its
/// floors. Tests that install it, or that need its floors to stay put, hold this.
static CRD_OWNER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the API server accepts (dry run) a VideoDelivery with these signing timings: its CRD's floors as a user
/// meets them. Err carries the API server's message.
async fn accepts_signing(client: &Client, ns: &str, signing: &str) -> Result<(), String> {
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), ns);
    let vd = VideoDelivery::new(
        "floor-probe",
        common::spec(&format!("storage: {{url: 's3://videos'}}\nsigning: {signing}")),
    );
    match vds.create(&PostParams { dry_run: true, ..Default::default() }, &vd).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.message),
        Err(e) => panic!("{e}"),
    }
}

/// The scenario's fastest rotation (`b`), below the production floors.
const FAST_SIGNING: &str = "{rotationInterval: 8s, propagationDelay: 2s, maxTokenLifetime: 3s, clockSkew: 1s}";

/// Waits until the API server enforces a CRD that helm just changed (a CRD update reaches its handler shortly after).
async fn until_signing(client: &Client, ns: &str, signing: &str, accepted: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = accepts_signing(client, ns, signing).await;
        if answer.is_ok() == accepted {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the API server's answer to {signing} stayed {answer:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_chart_runs_the_operator_with_exactly_enough_rights() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let system = cp.namespace("vd-system").await.unwrap();
    let apps = cp.namespace("apps").await.unwrap();
    let _crd = CRD_OWNER.lock().await;
    common::install_podmonitor_crd(cp);
    common::install_gateway_api_crds(cp);
    // The chart installs the CRD (taking it over from the control plane's start, or an earlier release) with the
    // documented lab setting: floors of 1 s on both the CRD and the operator, for the scenario's 8 s rotation.
    let sets = format!("leaderElection.leaseDuration=6s,{TEST_FLOORS}");
    let notes =
        helm(cp, &["install", "videodelivery", CHART, "--namespace", &system, "--take-ownership", "--set", &sets])
            .unwrap();
    // Whoever installs with lowered floors is told, every time, that this is no production setting.
    assert!(notes.contains("WARNING: signingFloors are not the production defaults"), "{notes}");
    until_signing(&client, &apps, FAST_SIGNING, true).await;

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
    let rendered = helm(cp, &["template", "videodelivery", CHART, "--namespace", &system]).unwrap();
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
                    .chain(common::TEST_FLOOR_FLAGS.iter().map(|s| s.to_string()))
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
async fn upgrade_updates_the_crd_and_uninstall_leaves_only_the_crd() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let system = cp.namespace("vd-upgrade").await.unwrap();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd_name = "videodeliveries.videodelivery.dev";
    let _crd = CRD_OWNER.lock().await;
    helm(cp, &["install", "vdu", CHART, "--namespace", &system, "--take-ownership", "--set", TEST_FLOORS]).unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), &system);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &system);
    assert!(services.get_opt("vdu-videodelivery-metrics").await.unwrap().is_some());
    assert!(pdbs.get_opt("vdu-videodelivery").await.unwrap().is_some(), "two replicas: a PDB");
    let crd = crds.get(crd_name).await.unwrap();
    assert_eq!(crd.annotations().get("meta.helm.sh/release-name").map(String::as_str), Some("vdu"));
    assert_eq!(crd.annotations().get("helm.sh/resource-policy").map(String::as_str), Some("keep"));
    until_signing(&client, &system, FAST_SIGNING, true).await;

    // An upgrade with a higher floor changes the CRD's rule, and the API server refuses what the new floor forbids,
    // with the floor in its message; the operator gets the same floor.
    let sets = format!(
        "replicas=1,metrics.service.enabled=false,watchNamespace={system},signingFloors.propagationDelay=1s,\
         signingFloors.tokenLifetime=1s,signingFloors.rotationInterval=2h"
    );
    helm(cp, &["upgrade", "vdu", CHART, "--namespace", &system, "--set", &sets]).unwrap();
    let rules = serde_json::to_string(&crds.get(crd_name).await.unwrap().spec.versions[0].schema).unwrap();
    assert!(rules.contains("duration(self.rotationInterval) >= duration('2h')"), "{rules}");
    until_signing(&client, &system, FAST_SIGNING, false).await;
    let refused = accepts_signing(&client, &system, FAST_SIGNING).await.unwrap_err();
    assert!(refused.contains("signing.rotationInterval must be at least 2h"), "{refused}");
    accepts_signing(
        &client,
        &system,
        "{rotationInterval: 2h, propagationDelay: 2s, maxTokenLifetime: 3s, clockSkew: 1s}",
    )
    .await
    .unwrap();
    let dep = Api::<Deployment>::namespaced(client.clone(), &system).get("vdu-videodelivery").await.unwrap();
    let args = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    assert!(args.contains(&"--min-rotation-interval=2h".to_string()), "{args:?}");

    assert!(services.get_opt("vdu-videodelivery-metrics").await.unwrap().is_none(), "disabled Service removed");
    assert!(pdbs.get_opt("vdu-videodelivery").await.unwrap().is_none(), "one replica: no PDB");
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
        + pdbs.list(&by_release).await.unwrap().items.len()
        + services.list(&by_release).await.unwrap().items.len();
    assert_eq!(left, 0, "uninstall leaves nothing of the release");
    // crds.keep: the CRD, and with it every VideoDelivery, outlives the release, still enforcing its floors.
    assert!(crds.get_opt(crd_name).await.unwrap().is_some(), "the CRD is kept");
    assert!(accepts_signing(&client, &system, FAST_SIGNING).await.is_err());
}

/// A second release in a cluster whose CRD is already there (crds.enabled=false), with its own names and a
/// ServiceAccount the platform team made: everything is named after fullnameOverride and bound to that account.
#[tokio::test]
async fn overrides_and_an_existing_service_account_on_the_api_server() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("vd-named").await.unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let mine = ServiceAccount {
        metadata: ObjectMeta { name: Some("platform-operator".into()), ..Default::default() },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &mine).await.unwrap();
    let sets = "crds.enabled=false,fullnameOverride=video-ops,serviceAccount.create=false,\
                serviceAccount.name=platform-operator";
    let rendered = helm(cp, &["install", "vdn", CHART, "--namespace", &ns, "--set", sets]).unwrap();
    assert!(rendered.contains("STATUS: deployed"), "{rendered}");
    assert!(!rendered.contains("WARNING"), "production floors need no warning: {rendered}");

    let dep = Api::<Deployment>::namespaced(client.clone(), &ns).get("video-ops").await.unwrap();
    let pod = dep.spec.as_ref().unwrap().template.clone();
    assert_eq!(pod.spec.as_ref().unwrap().service_account_name.as_deref(), Some("platform-operator"));
    let names: Vec<String> =
        accounts.list(&ListParams::default()).await.unwrap().items.iter().map(|a| a.name_any()).collect();
    assert!(!names.contains(&"video-ops".to_string()), "no ServiceAccount made: {names:?}");
    let binding = Api::<ClusterRoleBinding>::all(client.clone()).get("video-ops").await.unwrap();
    assert_eq!(binding.role_ref.name, "video-ops");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!((subject.name.as_str(), subject.namespace.as_deref()), ("platform-operator", Some(ns.as_str())));
    assert!(Api::<Role>::namespaced(client.clone(), &ns).get_opt("video-ops-leader-election").await.unwrap().is_some());
    assert!(Api::<Service>::namespaced(client.clone(), &ns).get_opt("video-ops-metrics").await.unwrap().is_some());
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns).get("video-ops").await.unwrap();
    let pod_labels = pod.metadata.unwrap().labels.unwrap();
    let selected = pdb.spec.unwrap().selector.unwrap().match_labels.unwrap();
    assert!(selected.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "the PDB selects the operator's pods");

    // The account the platform team made now has the operator's rights, as the API server decides them.
    let can = |verb: &str, resource: &str| {
        let out = Command::new(vd_testsupport::binary("kubectl").unwrap())
            .env("KUBECONFIG", cp.kubeconfig())
            .args(["auth", "can-i", verb, resource, "--all-namespaces"])
            .arg(format!("--as=system:serviceaccount:{ns}:platform-operator"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can("watch", "videodeliveries.videodelivery.dev"));
    assert!(can("patch", "deployments.apps"));
    assert!(!can("delete", "secrets"));

    helm(cp, &["uninstall", "vdn", "--namespace", &ns, "--wait"]).unwrap();
    assert!(
        accounts.get_opt("platform-operator").await.unwrap().is_some(),
        "the chart leaves an account it did not make"
    );
    assert!(Api::<ClusterRoleBinding>::all(client.clone()).get_opt("video-ops").await.unwrap().is_none());
}
