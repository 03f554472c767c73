//! The operator binary against a real API server and controller manager: what a VideoDelivery becomes, what its
//! status says, how keys rotate, and that deleting it or restarting the operator does what a user expects.

mod common;

use std::time::Duration;

use common::{Operator, eventually, keyring, rv, selector, wait_ready};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::{ByteString, api::core::v1::Event};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use vd_testsupport::ControlPlane;
use vd_token::KeyState;
use videodelivery_operator::crd::VideoDelivery;

const LONG: Duration = Duration::from_secs(60);

/// The keys of a keyring at one moment: id and state.
type Snapshot = Vec<(String, KeyState)>;

#[tokio::test]
async fn a_videodelivery_becomes_keys_agents_and_a_truthful_status() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("lifecycle").await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    common::create(
        &client,
        &ns,
        "media",
        "storage: {url: 's3://videos/prod', endpoint: 'http://minio:9000', pathStyle: true}\n\
         agents: {replicas: 2, publicPrefixes: [/videos/public/], corsOrigins: ['https://app.example'], cache: {sizeMiB: 64}, \
                  playback: {rewriteManifests: true, session: {ttl: 8h, sameSite: Lax}}}",
    )
    .await;

    // Keys are ready at once; agents are not until their pods are.
    let vd = wait_ready(&client, &ns, "media", "False", Some("AgentsUnavailable")).await;
    let status = vd.status.clone().unwrap();
    assert_eq!(common::condition(&vd, "KeysReady").unwrap().status, "True");
    assert_eq!(status.desired_agents, Some(2));
    assert_eq!(status.url.as_deref(), Some(&*format!("http://media-agent.{ns}.svc/videos/")));
    let (ring, secret) = keyring(&client, &ns, "media").await.unwrap();
    assert_eq!(status.active_key_id.as_deref(), Some(ring.active().unwrap().kid()));
    let data = secret.data.as_ref().unwrap();
    assert_eq!(data["active-kid"].0, ring.active().unwrap().kid().as_bytes());
    assert_eq!(data["active-key"].0, ring.active().unwrap().secret_bytes());
    assert_eq!(status.keys.len(), 1);
    let status_json = serde_json::to_string(&status).unwrap();
    let b64 = base64_of(ring.active().unwrap().secret_bytes());
    assert!(!status_json.contains(&b64), "status never carries key material");

    let deploy: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = deploy.get("media-agent").await.unwrap();
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(common::AGENT_IMAGE));
    let args = c.args.clone().unwrap();
    for want in [
        "--storage=s3://videos/prod",
        "--s3-endpoint=http://minio:9000",
        "--s3-path-style",
        "--public-prefix=/videos/public/",
        "--cors-origin=https://app.example",
        "--cache-size-mib=64",
        "--slice-size-kib=1024",
        "--rewrite-manifests",
        "--session-ttl=8h",
        "--session-cookie-same-site=lax",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
    }
    assert!(c.env.is_none(), "no secret in environment variables");
    let vol = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(vol.secret.as_ref().unwrap().secret_name.as_deref(), Some("media-keyring"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(c.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
    assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));

    assert!(Api::<Service>::namespaced(client.clone(), &ns).get_opt("media-agent").await.unwrap().is_some());
    assert!(Api::<ServiceAccount>::namespaced(client.clone(), &ns).get_opt("media-agent").await.unwrap().is_some());
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    assert!(pdbs.get_opt("media-agent").await.unwrap().is_some(), "two replicas get a PDB");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    assert!(hpas.get_opt("media-agent").await.unwrap().is_none());

    // The controller manager made pods; act as the kubelet and mark them ready.
    eventually("pods ready", LONG, || async {
        vd_testsupport::mark_pods_ready(&client, &ns, &selector("media")).await.unwrap();
        let d = deploy.get("media-agent").await.ok()?;
        (d.status?.ready_replicas? == 2).then_some(())
    })
    .await;
    let vd = wait_ready(&client, &ns, "media", "True", Some("Ready")).await;
    assert_eq!(vd.status.as_ref().unwrap().ready_agents, Some(2));
    assert_eq!(vd.status.as_ref().unwrap().observed_generation, vd.metadata.generation);

    // Switch to autoscaling: an HPA appears, replicas are left to it, the PDB follows the minimum.
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"spec": {"agents": {"replicas": null, "autoscaling": {"minReplicas": 1, "maxReplicas": 6}}}});
    vds.patch("media", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let hpa = eventually("HPA", LONG, || async { hpas.get_opt("media-agent").await.ok()? }).await;
    assert_eq!(hpa.spec.unwrap().max_replicas, 6);
    eventually("PDB removed", LONG, || async { pdbs.get_opt("media-agent").await.ok()?.is_none().then_some(()) }).await;

    // Events tell the story.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> =
        events.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|e| e.reason).collect();
    assert!(reasons.iter().any(|r| r == "KeyCreated"), "{reasons:?}");

    // Deleting the VideoDelivery removes what it made (garbage collection by owner references).
    vds.delete("media", &DeleteParams::foreground()).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    eventually("owned objects gone", LONG, || async {
        let gone = secrets.get_opt("media-keyring").await.ok()?.is_none()
            && deploy.get_opt("media-agent").await.ok()?.is_none()
            && hpas.get_opt("media-agent").await.ok()?.is_none()
            && Api::<Service>::namespaced(client.clone(), &ns).get_opt("media-agent").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn missing_storage_credentials_become_a_condition_then_resolve() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("credentials").await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    common::create(
        &client,
        &ns,
        "media",
        "storage: {url: 's3://videos', credentialsSecretRef: {name: s3}}\nagents: {replicas: 1}",
    )
    .await;
    let vd = wait_ready(&client, &ns, "media", "False", Some("StorageCredentialsMissing")).await;
    let msg = &common::condition(&vd, "Ready").unwrap().message;
    assert!(msg.contains("\"s3\"") && msg.contains("does not exist"), "{msg}");
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(deploy.get_opt("media-agent").await.unwrap().is_none(), "no agents that could not start");

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let creds = Secret {
        metadata: ObjectMeta { name: Some("s3".into()), ..Default::default() },
        data: Some(
            [
                ("AWS_ACCESS_KEY_ID".to_string(), ByteString(b"AKIDEXAMPLE".to_vec())),
                ("AWS_SECRET_ACCESS_KEY".to_string(), ByteString(b"very-secret-value".to_vec())),
            ]
            .into(),
        ),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &creds).await.unwrap();
    let vd = wait_ready(&client, &ns, "media", "False", Some("AgentsUnavailable")).await;
    let d = deploy.get("media-agent").await.unwrap();
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c.env_from.as_ref().unwrap()[0].secret_ref.as_ref().unwrap().name, "s3");
    let everything = serde_json::to_string(&vd).unwrap();
    assert!(!everything.contains("very-secret-value"));
}

#[tokio::test]
async fn keys_rotate_in_two_phases_at_the_right_times() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("rotation").await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    // grace = 3 + 5 + 1 = 9 s; interval 12 s.
    common::create(
        &client,
        &ns,
        "media",
        "storage: {url: 's3://videos'}\nsigning: {rotationInterval: 12s, propagationDelay: 3s, maxTokenLifetime: 5s, clockSkew: 1s}",
    )
    .await;
    let (first, _) = eventually("keyring", LONG, || keyring(&client, &ns, "media")).await;
    let a = first.active().unwrap().kid().to_string();
    let t0 = first.active().unwrap().activated_at().unwrap();

    // Watch the Secret second by second for one whole cycle and a bit.
    let mut seen: Vec<(u64, Snapshot)> = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(27) {
        let (ring, _) = keyring(&client, &ns, "media").await.unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(ring.keys().iter().filter(|k| k.state() == KeyState::Active).count(), 1, "always one active key");
        seen.push((now, ring.keys().iter().map(|k| (k.kid().to_string(), k.state())).collect()));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let when = |pred: &dyn Fn(&Snapshot) -> bool| seen.iter().find(|(_, ks)| pred(ks)).map(|(t, _)| *t - t0);
    let b_pending =
        when(&|ks| ks.iter().any(|(k, s)| *k != a && *s == KeyState::Pending)).expect("a key was published");
    let b_active = when(&|ks| ks.iter().any(|(k, s)| *k != a && *s == KeyState::Active)).expect("it was promoted");
    let a_gone = when(&|ks| !ks.iter().any(|(k, _)| *k == a)).expect("the old key was removed");
    // Published at interval - delay = 9 s, promoted at 12 s, the old key removed after 12 + 9 = 21 s.
    let near = |got: u64, want: u64| got + 1 >= want && got <= want + 2;
    assert!(near(b_pending, 9), "published at +{b_pending}s, expected +9s");
    assert!(near(b_active, 12), "promoted at +{b_active}s, expected +12s");
    assert!(near(a_gone, 22), "old key removed at +{a_gone}s, expected +22s");
    let a_retiring = when(&|ks| ks.iter().any(|(k, s)| *k == a && *s == KeyState::Retiring)).unwrap();
    assert!(near(a_retiring, 12));

    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    let vd = vds.get("media").await.unwrap();
    let st = vd.status.unwrap();
    assert_ne!(st.active_key_id.as_deref(), Some(a.as_str()));
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> =
        events.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|e| e.reason).collect();
    for r in ["KeyCreated", "KeyPublished", "KeyPromoted", "KeyRemoved"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} event in {reasons:?}");
    }
}

#[tokio::test]
async fn a_rotation_request_rotates_once_and_restarts_change_nothing() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("manual").await.unwrap();
    let mut op = Operator::start(cp, &ns, &[]);
    common::create(&client, &ns, "media", "storage: {url: 's3://videos'}\nsigning: {propagationDelay: 2s}").await;
    wait_ready(&client, &ns, "media", "False", Some("AgentsUnavailable")).await;
    let (ring, secret) = keyring(&client, &ns, "media").await.unwrap();
    let a = ring.active().unwrap().kid().to_string();
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    // The generation moves only when the spec does (the controller manager keeps writing status).
    let d_gen = deploy.get("media-agent").await.unwrap().metadata.generation;

    // Nothing is due for a week: a restarted operator writes nothing.
    op.process.terminate(Duration::from_secs(10)).expect("the operator stops on SIGTERM");
    let op2 = Operator::start(cp, &ns, &[]);
    eventually("the new operator reconciled", LONG, || async {
        op2.metrics().await.contains("videodelivery_operator_reconciles_total{result=\"ok\"}").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rv(&keyring(&client, &ns, "media").await.unwrap().1), rv(&secret), "no key churn");
    assert_eq!(deploy.get("media-agent").await.unwrap().metadata.generation, d_gen, "no rollout");

    // `vdctl request-rotation` sets this annotation.
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"metadata": {"annotations": {"videodelivery.dev/rotate": "2026-11-24T10:00:00Z"}}});
    vds.patch("media", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let b = eventually("new key active", LONG, || async {
        let (ring, _) = keyring(&client, &ns, "media").await?;
        (ring.active().unwrap().kid() != a).then(|| ring.active().unwrap().kid().to_string())
    })
    .await;
    let (ring, _) = keyring(&client, &ns, "media").await.unwrap();
    assert_eq!(ring.get(&a).unwrap().state(), KeyState::Retiring, "the old key keeps working");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ring, _) = keyring(&client, &ns, "media").await.unwrap();
    assert_eq!(ring.active().unwrap().kid(), b, "one request, one rotation");
    assert_eq!(ring.keys().len(), 2);
    assert_eq!(
        deploy.get("media-agent").await.unwrap().metadata.generation,
        d_gen,
        "a key rotation does not roll the agents"
    );
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_hand_over() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("leader").await.unwrap();
    let lease = ["--leader-elect", "--lease-duration=6s", &format!("--lease-namespace={ns}")];
    let mut first = Operator::start(cp, &ns, &[&lease[..], &["--identity=one"]].concat());
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), &ns);
    let holder = eventually("a leader", LONG, || async {
        leases.get_opt("videodelivery-operator").await.ok()??.spec?.holder_identity
    })
    .await;
    assert_eq!(holder, "one");
    let second = Operator::start(cp, &ns, &[&lease[..], &["--identity=two"]].concat());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(second.metrics().await.contains("videodelivery_operator_leader 0"), "the second replica waits");
    common::create(&client, &ns, "media", "storage: {url: 's3://videos'}").await;
    wait_ready(&client, &ns, "media", "False", Some("AgentsUnavailable")).await;

    // SIGTERM releases the lease; the standby takes over and keeps reconciling.
    first.process.terminate(Duration::from_secs(10)).expect("stops");
    eventually("handover", LONG, || async {
        let h = leases.get_opt("videodelivery-operator").await.ok()??.spec?.holder_identity?;
        (h == "two").then_some(())
    })
    .await;
    common::create(&client, &ns, "second", "storage: {url: 's3://videos'}").await;
    wait_ready(&client, &ns, "second", "False", Some("AgentsUnavailable")).await;
}
