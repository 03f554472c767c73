//! The operator tells the truth and loses no key in silence, against a real API server: apply failures become
//! `Ready=False` with the API server's words, a deleted keyring comes back pending and loud, two operators never
//! swap a first key, a switch to autoscaling keeps capacity, and storage-credential Secrets are watched.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Operator, condition, eventually, keyring, selector, wait_ready};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::{ByteString, api::coordination::v1::Lease};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use vd_testsupport::ControlPlane;
use vd_token::KeyState;
use videodelivery_operator::crd::VideoDelivery;

const LONG: Duration = Duration::from_secs(60);

async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut all = events.list(&ListParams::default()).await.unwrap().items;
    all.retain(|e| e.involved_object.name.as_deref() == Some(name));
    all
}

async fn warning(client: &Client, ns: &str, name: &str, reason: &str) -> Option<String> {
    events_for(client, ns, name)
        .await
        .into_iter()
        .find(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .and_then(|e| e.message)
}

async fn agents_ready(client: &Client, ns: &str, name: &str, want: i32) {
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eventually("pods ready", LONG, || async {
        vd_testsupport::mark_pods_ready(client, ns, &selector(name)).await.ok()?;
        let d = deploy.get(&format!("{name}-agent")).await.ok()?;
        (d.status?.ready_replicas? >= want).then_some(())
    })
    .await;
}

/// A cluster admission policy (ValidatingAdmissionPolicy, built into the API server) that refuses Deployments
/// carrying a given cache-control flag in one namespace: the kind of organisation rule an operator meets.
async fn deny_policy(client: &Client, ns: &str) -> (Api<DynamicObject>, Api<DynamicObject>, String) {
    let gvk = |kind: &str| GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let policies: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk("ValidatingAdmissionPolicy")));
    let bindings: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk("ValidatingAdmissionPolicyBinding")));
    let name = format!("no-public-cache-{ns}");
    let policy: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                "resources": ["deployments"],
            }]},
            "validations": [{
                "expression": "!object.spec.template.spec.containers.exists(c, has(c.args) && c.args.exists(a, a.startsWith('--cache-control=public')))",
                "message": "public caching of private video is forbidden by cluster policy",
            }],
        },
    }))
    .unwrap();
    policies.create(&PostParams::default(), &policy).await.unwrap();
    let binding: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
        },
    }))
    .unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    (policies, bindings, name)
}

#[tokio::test]
async fn a_refused_apply_turns_ready_false_with_the_api_servers_words_and_keys_keep_rotating() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("applyfailed").await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    common::create(
        &client,
        &ns,
        "media",
        "storage: {url: 's3://videos'}\nsigning: {propagationDelay: 2s}\nagents: {replicas: 1}",
    )
    .await;
    agents_ready(&client, &ns, "media", 1).await;
    wait_ready(&client, &ns, "media", "True", Some("Ready")).await;

    let (policies, bindings, policy) = deny_policy(&client, &ns).await;
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    // The policy takes a moment to be enforced; keep editing until the refusal shows.
    let mut n = 0;
    let vd = eventually("Ready=False ApplyFailed", LONG, || {
        n += 1;
        let vds = vds.clone();
        async move {
            let patch = serde_json::json!({"spec": {"agents": {"cacheControl": format!("public, max-age={n}")}}});
            vds.patch("media", &PatchParams::default(), &Patch::Merge(&patch)).await.ok()?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let vd = vds.get("media").await.ok()?;
            (condition(&vd, "Ready")?.reason == "ApplyFailed").then_some(vd)
        }
    })
    .await;
    let generation = vd.metadata.generation;
    let ready = condition(&vd, "Ready").unwrap();
    assert!(
        ready.message.contains("public caching of private video is forbidden by cluster policy")
            && ready.message.contains("media-agent"),
        "{}",
        ready.message
    );
    assert!(ready.message.contains("1/1 agents keep serving"), "{}", ready.message);
    assert_eq!(vd.status.as_ref().unwrap().observed_generation, generation, "observedGeneration follows the edit");
    let event =
        eventually("an ApplyFailed Warning event", LONG, || warning(&client, &ns, "media", "ApplyFailed")).await;
    assert!(event.contains("forbidden by cluster policy"), "{event}");

    // `kubectl wait --for=condition=Ready` sees it.
    let kubectl = vd_testsupport::binary("kubectl").unwrap();
    let out = std::process::Command::new(kubectl)
        .env("KUBECONFIG", cp.kubeconfig())
        .args(["wait", "-n", &ns, "--for=condition=Ready", "vd/media", "--timeout=2s"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "kubectl wait must not report Ready");

    // Rotation goes on, and status keeps showing the keys.
    let before = vd.status.as_ref().unwrap().active_key_id.clone().unwrap();
    let patch = serde_json::json!({"metadata": {"annotations": {"videodelivery.dev/rotate": "now"}}});
    vds.patch("media", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let vd = eventually("status shows the new active key", LONG, || async {
        let vd = vds.get("media").await.ok()?;
        let st = vd.status.as_ref()?;
        (st.active_key_id.as_deref()? != before && st.keys.len() == 2).then_some(vd)
    })
    .await;
    assert_eq!(condition(&vd, "Ready").unwrap().reason, "ApplyFailed", "still blocked");

    // The policy goes away: the operator retries with backoff and recovers on its own.
    bindings.delete(&policy, &DeleteParams::default()).await.unwrap();
    policies.delete(&policy, &DeleteParams::default()).await.unwrap();
    agents_ready(&client, &ns, "media", 1).await;
    eventually("Ready again", LONG, || async {
        vd_testsupport::mark_pods_ready(&client, &ns, &selector("media")).await.ok()?;
        let vd = vds.get("media").await.ok()?;
        (condition(&vd, "Ready")?.status == "True").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_deleted_keyring_comes_back_pending_with_a_warning_never_active_at_once() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("keyringloss").await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    common::create(
        &client,
        &ns,
        "media",
        "storage: {url: 's3://videos'}\nsigning: {rotationInterval: 1h, propagationDelay: 15s, maxTokenLifetime: 10m}\nagents: {replicas: 1}",
    )
    .await;
    let (first, _) = eventually("keyring", LONG, || keyring(&client, &ns, "media")).await;
    let lost = first.active().unwrap().kid().to_string();
    wait_ready(&client, &ns, "media", "False", Some("AgentsUnavailable")).await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let deleted_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    secrets.delete("media-keyring", &DeleteParams::default()).await.unwrap();
    let (ring, secret) = eventually("a new keyring", LONG, || async {
        let (ring, s) = keyring(&client, &ns, "media").await?;
        ring.get(&lost).is_none().then_some((ring, s))
    })
    .await;
    assert!(ring.active().is_none(), "no key is active before agents can have it");
    let pending = &ring.keys()[0];
    assert_eq!(pending.state(), KeyState::Pending);
    assert!(pending.activate_after().unwrap() >= deleted_at + 15, "active only after the propagation delay");
    let data = secret.data.as_ref().unwrap();
    assert!(!data.contains_key("active-key") && !data.contains_key("active-kid"), "nothing to sign with yet");

    let warned =
        eventually("a KeyringRecreated Warning", LONG, || warning(&client, &ns, "media", "KeyringRecreated")).await;
    assert!(warned.contains("unknown_kid") && warned.contains(pending.kid()), "{warned}");
    let vd = wait_ready(&client, &ns, "media", "False", Some("KeyringRecreated")).await;
    assert_eq!(condition(&vd, "KeysReady").unwrap().reason, "KeyringRecreated");

    // After the delay the key is promoted and backends can sign again.
    let (ring, secret) = eventually("the pending key promoted", LONG, || async {
        let (ring, s) = keyring(&client, &ns, "media").await?;
        ring.active().is_some().then_some((ring, s))
    })
    .await;
    assert_eq!(ring.active().unwrap().kid(), pending.kid());
    assert_eq!(secret.data.as_ref().unwrap()["active-kid"].0, pending.kid().as_bytes());
    let vd = wait_ready(&client, &ns, "media", "False", Some("AgentsUnavailable")).await;
    assert_eq!(condition(&vd, "KeysReady").unwrap().status, "True");
}

#[tokio::test]
async fn two_operators_without_election_never_swap_a_first_key() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("race").await.unwrap();
    let _a = Operator::start(cp, &ns, &["--identity=a"]);
    let _b = Operator::start(cp, &ns, &["--identity=b"]);
    let names: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    for n in &names {
        common::create(&client, &ns, n, "storage: {url: 's3://videos'}\nagents: {replicas: 0}").await;
    }
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    for n in &names {
        let (ring, _) = eventually("keyring", LONG, || keyring(&client, &ns, n)).await;
        first.insert(n.clone(), ring.active().unwrap().kid().to_string());
    }
    // Let both operators settle, then every keyring must still hold the key it first had, and only that key was
    // ever announced.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in &names {
        let (ring, _) = keyring(&client, &ns, n).await.unwrap();
        assert_eq!(ring.keys().len(), 1, "{n}");
        assert_eq!(ring.active().unwrap().kid(), first[n], "{n}: the first key was replaced");
        let created: BTreeSet<String> = events_for(&client, &ns, n)
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("KeyCreated"))
            .filter_map(|e| e.message)
            .collect();
        assert!(created.len() <= 1, "{n}: two first keys were announced: {created:?}");
    }
}

#[tokio::test]
async fn switching_to_autoscaling_keeps_the_current_agent_count() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("handoff").await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    common::create(&client, &ns, "media", "storage: {url: 's3://videos'}\nagents: {replicas: 3}").await;
    agents_ready(&client, &ns, "media", 3).await;

    // Someone else's budget under the agents' name must survive the operator (three replicas want no PDB
    // change, so take autoscaling min 1 below, where the operator wants none).
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"spec": {"agents": {"replicas": null, "autoscaling": {"minReplicas": 1, "maxReplicas": 6}}}});
    vds.patch("media", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let start = std::time::Instant::now();
    let mut lowest = i32::MAX;
    while start.elapsed() < Duration::from_secs(8) {
        let d = deploy.get("media-agent").await.unwrap();
        lowest = lowest.min(d.spec.unwrap().replicas.unwrap_or(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lowest, 3, "the Deployment dropped to {lowest} replicas while the autoscaler took over");

    // A PDB the operator did not make is not deleted.
    pdbs.delete("media-agent", &DeleteParams::default()).await.ok();
    let foreign = PodDisruptionBudget {
        metadata: ObjectMeta { name: Some("media-agent".into()), ..Default::default() },
        spec: Some(k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec {
            min_available: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)),
            ..Default::default()
        }),
        ..Default::default()
    };
    eventually("our PDB gone", LONG, || async { pdbs.get_opt("media-agent").await.ok()?.is_none().then_some(()) })
        .await;
    pdbs.create(&PostParams::default(), &foreign).await.unwrap();
    let patch = serde_json::json!({"spec": {"agents": {"cacheControl": "private, max-age=60"}}});
    vds.patch("media", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    eventually("the edit reconciled", LONG, || async {
        let d = deploy.get("media-agent").await.ok()?;
        let args = d.spec?.template.spec?.containers[0].args.clone()?;
        args.iter().any(|a| a == "--cache-control=private, max-age=60").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pdbs.get_opt("media-agent").await.unwrap().is_some(), "a PDB the operator does not own was deleted");
}

#[tokio::test]
async fn storage_credentials_are_watched_and_labels_restored() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("watchcreds").await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    common::create(
        &client,
        &ns,
        "media",
        "storage: {url: 's3://videos', credentialsSecretRef: {name: s3}}\nagents: {replicas: 1}",
    )
    .await;
    wait_ready(&client, &ns, "media", "False", Some("StorageCredentialsMissing")).await;
    let event =
        eventually("a Warning event", LONG, || warning(&client, &ns, "media", "StorageCredentialsMissing")).await;
    assert!(event.contains("\"s3\""), "{event}");

    // Well inside the operator's 15 s retry and 5 min resync: only a watch is this quick.
    let quick = Duration::from_secs(6);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let creds = |secret: &str| Secret {
        metadata: ObjectMeta { name: Some("s3".into()), ..Default::default() },
        data: Some(BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".to_string(), ByteString(b"AKIDEXAMPLE".to_vec())),
            ("AWS_SECRET_ACCESS_KEY".to_string(), ByteString(secret.as_bytes().to_vec())),
        ])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &creds("first-secret")).await.unwrap();
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let hash = |d: &Deployment| {
        d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()
            ["videodelivery.dev/config-hash"]
            .clone()
    };
    let d = eventually("agents deployed", quick, || async { deploy.get_opt("media-agent").await.ok()? }).await;
    let before = hash(&d);
    agents_ready(&client, &ns, "media", 1).await;

    secrets.replace("s3", &PostParams::default(), &creds("rotated-secret")).await.unwrap();
    eventually("agents rolled for new credentials", quick, || async {
        let d = deploy.get("media-agent").await.ok()?;
        (hash(&d) != before).then_some(())
    })
    .await;
    agents_ready(&client, &ns, "media", 1).await;

    secrets.delete("s3", &DeleteParams::default()).await.unwrap();
    let vd = eventually("Ready=False on deletion", quick, || async {
        let vd = Api::<VideoDelivery>::namespaced(client.clone(), &ns).get("media").await.ok()?;
        (condition(&vd, "Ready")?.reason == "StorageCredentialsMissing").then_some(vd)
    })
    .await;
    let msg = &condition(&vd, "Ready").unwrap().message;
    assert!(msg.contains("agents keep serving"), "status must not claim no agents run: {msg}");

    // The keyring Secret's label is how the operator finds it; removed, it comes back.
    let patch = serde_json::json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}});
    secrets.patch("media-keyring", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    eventually("label restored", quick, || async {
        let s = secrets.get("media-keyring").await.ok()?;
        (s.labels().get("app.kubernetes.io/managed-by")? == "videodelivery-operator").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_second_rotation_request_while_one_is_pending_is_served_by_it_and_said() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("idempotent").await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    common::create(&client, &ns, "media", "storage: {url: 's3://videos'}\nsigning: {propagationDelay: 20s}").await;
    eventually("keyring", LONG, || keyring(&client, &ns, "media")).await;
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    for value in ["first", "second"] {
        let patch = serde_json::json!({"metadata": {"annotations": {"videodelivery.dev/rotate": value}}});
        vds.patch("media", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        eventually("handled", LONG, || async {
            let (_, s) = keyring(&client, &ns, "media").await?;
            (s.annotations().get("videodelivery.dev/rotate-handled")? == value).then_some(())
        })
        .await;
    }
    let (ring, _) = keyring(&client, &ns, "media").await.unwrap();
    assert_eq!(ring.keys().len(), 2, "one pending key serves both requests");
    let said = eventually("a RotationRequested event", LONG, || async {
        events_for(&client, &ns, "media")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("RotationRequested"))
            .and_then(|e| e.message)
    })
    .await;
    let pending = ring.keys().iter().find(|k| k.state() == KeyState::Pending).unwrap();
    assert!(said.contains("\"second\"") && said.contains(pending.kid()), "{said}");
}

#[tokio::test]
async fn leader_election_trusts_its_own_clock_not_the_holders() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("skew").await.unwrap();
    // A live holder whose clock is an hour behind: its renewTime looks expired to anyone comparing clocks, but it
    // keeps renewing.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let behind = || {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(3600),
        )
    };
    let lease = Lease {
        metadata: ObjectMeta { name: Some("videodelivery-operator".into()), ..Default::default() },
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some("skewed-holder".into()),
            lease_duration_seconds: Some(6),
            acquire_time: Some(behind()),
            renew_time: Some(behind()),
            ..Default::default()
        }),
    };
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let renewer = {
        let leases = leases.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let patch = serde_json::json!({"spec": {"renewTime": behind()}});
                let _ = leases.patch("videodelivery-operator", &PatchParams::default(), &Patch::Merge(&patch)).await;
            }
        })
    };
    let flags = ["--leader-elect", "--lease-duration=6s", &format!("--lease-namespace={ns}"), "--identity=new"];
    let op = Operator::start(cp, &ns, &flags);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let holder = leases.get("videodelivery-operator").await.unwrap().spec.unwrap().holder_identity;
    assert_eq!(holder.as_deref(), Some("skewed-holder"), "a renewing holder was deposed for its clock");
    assert!(op.metrics().await.contains("videodelivery_operator_leader 0"));

    // When it stops renewing, the candidate takes over after one lease duration of its own clock.
    renewer.abort();
    eventually("takeover", LONG, || async {
        let h = leases.get("videodelivery-operator").await.ok()?.spec?.holder_identity?;
        (h == "new").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_zero_lease_duration_is_refused_not_spun_on() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("lease0").await.unwrap();
    let mut op =
        Operator::start(cp, &ns, &["--leader-elect", "--lease-duration=0s", &format!("--lease-namespace={ns}")]);
    let status = eventually("the operator exits", Duration::from_secs(30), || {
        let s = op.process.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(!status.success());
    assert!(op.process.log().contains("lease duration must be at least 3s"), "{}", op.process.log());
}

#[tokio::test]
async fn a_pod_monitor_is_made_where_prometheus_operator_is_installed_and_its_absence_is_said() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("podmonitor").await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    common::create(
        &client,
        &ns,
        "media",
        "storage: {url: 's3://videos'}\nagents: {replicas: 1, metrics: {podMonitor: {enabled: true, interval: 15s}}}",
    )
    .await;
    // No Prometheus Operator yet: serving goes on, and the Warning says why nothing scrapes the agents.
    let said =
        eventually("a PodMonitorUnavailable Warning", LONG, || warning(&client, &ns, "media", "PodMonitorUnavailable"))
            .await;
    assert!(said.contains("monitoring.coreos.com/v1"), "{said}");
    agents_ready(&client, &ns, "media", 1).await;
    wait_ready(&client, &ns, "media", "True", Some("Ready")).await;

    common::install_podmonitor_crd(cp);
    let monitors: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &videodelivery_operator::resources::pod_monitor_api_resource());
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    let mut n = 0;
    let pm = eventually("the PodMonitor", LONG, || {
        n += 1;
        let (vds, monitors) = (vds.clone(), monitors.clone());
        async move {
            // The CRD's arrival is not watched; any edit (or the periodic resync) brings the PodMonitor.
            let touch = serde_json::json!({"metadata": {"annotations": {"touch": n.to_string()}}});
            vds.patch("media", &PatchParams::default(), &Patch::Merge(&touch)).await.ok()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            monitors.get_opt("media-agent").await.ok()?
        }
    })
    .await;
    let endpoint = &pm.data["spec"]["podMetricsEndpoints"][0];
    assert_eq!((endpoint["port"].as_str(), endpoint["path"].as_str()), (Some("admin"), Some("/metrics")));
    assert_eq!(endpoint["interval"].as_str(), Some("15s"));
    assert_eq!(pm.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"].as_str(), Some("media"));

    let off = serde_json::json!({"spec": {"agents": {"metrics": {"podMonitor": {"enabled": false}}}}});
    vds.patch("media", &PatchParams::default(), &Patch::Merge(&off)).await.unwrap();
    eventually("the PodMonitor removed", LONG, || async {
        monitors.get_opt("media-agent").await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn every_key_gets_its_own_event() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("keyevents").await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    // grace = 1 + 2 + 1 = 4 s; a new key is published every 5 s.
    common::create(
        &client,
        &ns,
        "media",
        "storage: {url: 's3://videos'}\nagents: {replicas: 0}\n\
         signing: {rotationInterval: 5s, propagationDelay: 1s, maxTokenLifetime: 2s, clockSkew: 1s}",
    )
    .await;
    // kube-runtime folds repeated events with the same reason into one series that keeps the first message; each
    // key's event must stay its own, or the second key never appears.
    let published = eventually("two keys published, each with its own event", LONG, || async {
        let notes: BTreeSet<String> = events_for(&client, &ns, "media")
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("KeyPublished"))
            .filter_map(|e| e.message)
            .collect();
        (notes.len() >= 2).then_some(notes)
    })
    .await;
    let kids: BTreeSet<&str> = published.iter().filter_map(|n| n.split_whitespace().nth(2)).collect();
    assert!(kids.len() >= 2, "{published:?}");
}

/// The status line of `GET path` on the operator's admin port, or None while nothing answers there.
async fn admin_status(admin: std::net::SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// A pod can start before its node routes the `kubernetes` Service (seen on a fresh CI node): the operator must wait,
/// not ready, and serve once the API server answers, instead of exiting into kubelet's crash-loop back-off.
#[tokio::test]
async fn an_operator_started_before_its_api_server_answers_waits_not_ready() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("lateapi").await.unwrap();
    // A kubeconfig whose server is a port nothing listens on yet; later a forwarder to the real API server opens
    // there (the certificate names 127.0.0.1, so TLS verifies through it).
    let kubeconfig = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    let server = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: https://")).unwrap().to_owned();
    assert!(server.starts_with("127.0.0.1:"), "the shared control plane listens on loopback: {server}");
    let late = common::free_port();
    let path = cp.dir().join("kubeconfig-late");
    std::fs::write(&path, kubeconfig.replace(&server, &format!("127.0.0.1:{late}"))).unwrap();
    let mut op = Operator::start_with_kubeconfig(cp, &path, &ns, &[]);

    // For 4 s the API server is unreachable: the process stays up, /healthz passes and /readyz refuses.
    let admin = op.admin;
    eventually("the admin port answers", LONG, || async { admin_status(admin, "/healthz").await }).await;
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        assert_eq!(op.process.try_wait().unwrap(), None, "the operator exited:\n{}", op.process.log());
        assert_eq!(admin_status(admin, "/readyz").await, Some(503), "{}", op.process.log());
        assert_eq!(admin_status(admin, "/healthz").await, Some(200));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(op.process.log().contains("API server not reached; retrying"), "{}", op.process.log());

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", late)).await.unwrap();
    let forwarder = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&server).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    // The retry pause is capped at 5 s.
    eventually("the operator ready once the API server answers", Duration::from_secs(20), || async {
        (admin_status(admin, "/readyz").await == Some(200)).then_some(())
    })
    .await;
    assert_eq!(op.process.try_wait().unwrap(), None, "{}", op.process.log());
    forwarder.abort();
}

/// The value of the operator's series `name` for VideoDelivery `ns/vd` (and `state`, for `keys`), if exposed.
fn series(metrics: &str, name: &str, ns: &str, vd: &str, state: Option<&str>) -> Option<i64> {
    let mut labels = format!("delivery_namespace=\"{ns}\",delivery=\"{vd}\"");
    if let Some(s) = state {
        labels.push_str(&format!(",state=\"{s}\""));
    }
    let prefix = format!("videodelivery_operator_{name}{{{labels}}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().unwrap())
}

/// Rotation deadlines are metrics per VideoDelivery, so one Prometheus can alert when a rotation is overdue: the
/// next rotation time is status's `nextRotationTime`, it moves on when the key rotates, and a deleted
/// VideoDelivery's series go away.
#[tokio::test]
async fn rotation_deadlines_are_metrics_per_videodelivery() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("rotmetrics").await.unwrap();
    let op = Operator::start(cp, &ns, &[]);
    common::create(
        &client,
        &ns,
        "media",
        "storage: {url: 's3://videos'}\nagents: {replicas: 0}\n\
         signing: {rotationInterval: 5s, propagationDelay: 1s, maxTokenLifetime: 2s, clockSkew: 1s}",
    )
    .await;
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    let (first, status_time) = eventually("nextRotationTime in status and in the metrics", LONG, || async {
        let status = vds.get("media").await.ok()?.status?;
        let at: k8s_openapi::jiff::Timestamp = status.next_rotation_time?.parse().ok()?;
        let m = op.metrics().await;
        let got = series(&m, "next_rotation_timestamp_seconds", &ns, "media", None)?;
        (got == at.as_second()).then_some((got, at.as_second()))
    })
    .await;
    assert_eq!(first, status_time);
    let m = op.metrics().await;
    assert_eq!(series(&m, "keys", &ns, "media", Some("active")), Some(1), "{m}");
    let last = series(&m, "last_rotation_timestamp_seconds", &ns, "media", None).expect("last rotation time");
    assert!(last <= first && first - last <= 5, "the active key rotates 5 s after it became active: {last} {first}");

    // The key rotates every 5 s: the deadline moves on.
    eventually("the next rotation time moves on after a rotation", LONG, || async {
        let m = op.metrics().await;
        (series(&m, "next_rotation_timestamp_seconds", &ns, "media", None)? > first).then_some(())
    })
    .await;

    // Deleted: its series go (another VideoDelivery's reconcile prunes them).
    vds.delete("media", &DeleteParams::default()).await.unwrap();
    common::create(&client, &ns, "other", "storage: {url: 's3://videos'}\nagents: {replicas: 0}").await;
    eventually("a deleted VideoDelivery's rotation series removed", LONG, || async {
        let m = op.metrics().await;
        let other = series(&m, "next_rotation_timestamp_seconds", &ns, "other", None);
        let media = series(&m, "next_rotation_timestamp_seconds", &ns, "media", None);
        (other.is_some() && media.is_none() && series(&m, "keys", &ns, "media", Some("active")).is_none()).then_some(())
    })
    .await;
}
