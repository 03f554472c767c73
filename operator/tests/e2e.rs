//! End to end: the operator, a real S3 server, and the agent binary run as a kubelet would run the Deployment's
//! pod (its args, its environment from the credentials Secret, the keyring Secret as a volume updated by symlink
//! swap a second late). A backend signs with the Secret's active key while keys rotate; no valid token is refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Operator, eventually, free_port, selector, wait_ready};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use vd_testsupport::{ControlPlane, Process, S3Server};
use vd_token::{Carrier, Signer, UrlRequest};

fn agent_binary() -> std::path::PathBuf {
    // target/debug/deps/e2e-xxxx -> target/debug/videodelivery-agent
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("videodelivery-agent");
    assert!(bin.exists(), "{} is missing: build it with `cargo build -p videodelivery-agent`", bin.display());
    bin
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Writes the keyring Secret into a secret volume the way a kubelet does (only the item the pod asks for).
fn mount_keyring(dir: &Path, s: &Secret) {
    let ring = &s.data.as_ref().unwrap()["keyring.json"].0;
    vd_testsupport::write_secret_volume(dir, &[("keyring.json", ring)]).unwrap();
}

/// Starts the agent the way a kubelet starts the pod template's container.
fn run_pod(d: &Deployment, secrets: &BTreeMap<String, Secret>, volume: &Path, port: u16, log: &Path) -> Process {
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    let mount = &c.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "keyring").unwrap().mount_path;
    let mut cmd = Command::new(agent_binary());
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    for from in c.env_from.iter().flatten() {
        let name = &from.secret_ref.as_ref().unwrap().name;
        for (k, v) in secrets[name].data.as_ref().unwrap() {
            cmd.env(k, String::from_utf8(v.0.clone()).unwrap());
        }
    }
    for a in c.args.as_ref().unwrap() {
        cmd.arg(a.replace(mount.as_str(), volume.to_str().unwrap()));
    }
    // The pod's own network namespace is loopback here: the container ports move to free ones.
    cmd.arg(format!("--listen=127.0.0.1:{port}")).arg(format!("--admin-listen=127.0.0.1:{}", free_port()));
    Process::spawn(cmd, log.to_path_buf()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_keep_working_through_a_full_rotation() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("e2e").await.unwrap();
    let s3 = S3Server::start().unwrap();
    let film: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    s3.put("media", "films/a.mp4", &film).unwrap();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let creds = Secret {
        metadata: ObjectMeta { name: Some("s3".into()), ..Default::default() },
        data: Some(BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".into(), ByteString(S3Server::ACCESS_KEY.into())),
            ("AWS_SECRET_ACCESS_KEY".into(), ByteString(S3Server::SECRET_KEY.into())),
        ])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &creds).await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    // grace = 4 + 5 + 1 = 10 s < 12 s interval: published at +8 s, promoted at +12 s, old key gone at +23 s.
    common::create(
        &client,
        &ns,
        "media",
        &format!(
            "storage: {{url: 's3://media', endpoint: '{}', region: us-east-1, pathStyle: true, credentialsSecretRef: {{name: s3}}}}\n\
             signing: {{rotationInterval: 12s, propagationDelay: 4s, maxTokenLifetime: 5s, clockSkew: 1s}}\n\
             agents: {{replicas: 1, rateLimit: {{requestsPerSecond: 0}}}}",
            s3.endpoint
        ),
    )
    .await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = eventually("the Deployment", Duration::from_secs(60), || async {
        deployments.get_opt("media-agent").await.ok()?
    })
    .await;
    let keyring_secret =
        eventually("the keyring", Duration::from_secs(60), || async { secrets.get_opt("media-keyring").await.ok()? })
            .await;

    // The kubelet: mount the keyring volume (only the items the pod asks for), start the container, keep the
    // volume in step with the Secret one second late, and report the pod ready.
    let volume = tempfile::tempdir().unwrap();
    mount_keyring(volume.path(), &keyring_secret);
    let port = free_port();
    let all = BTreeMap::from([("s3".to_string(), creds)]);
    let agent = run_pod(&d, &all, volume.path(), port, &cp.dir().join(format!("agent-{ns}.log")));
    eventually("the agent listens", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
    })
    .await;
    eventually("pods ready", Duration::from_secs(60), || async {
        vd_testsupport::mark_pods_ready(&client, &ns, &selector("media")).await.ok()?;
        let d = deployments.get("media-agent").await.ok()?;
        (d.status?.ready_replicas? >= 1).then_some(())
    })
    .await;
    wait_ready(&client, &ns, "media", "True", Some("Ready")).await;

    // The kubelet, on its own task as on a node: watch the Secret (a poll every 100 ms) and apply each change to
    // the volume one second after it was seen. The agent's own poll adds up to one more second: 2 s of the 4 s
    // propagationDelay.
    let kubelet = {
        let secrets = secrets.clone();
        let dir = volume.path().to_path_buf();
        let mut last_rv = keyring_secret.metadata.resource_version.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Ok(s) = secrets.get("media-keyring").await else { continue };
                if s.metadata.resource_version == last_rv {
                    continue;
                }
                last_rv = s.metadata.resource_version.clone();
                let dir = dir.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    mount_keyring(&dir, &s);
                });
            }
        })
    };

    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let base = format!("http://127.0.0.1:{port}");
    let mut kids = std::collections::BTreeSet::new();
    let (mut ok, mut early_token_ok) = (0u32, 0u32);
    // A token signed right at the start and used until it expires (5 s), across the key publication.
    let mut early: Option<(String, u64)> = None;
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(26) {
        i += 1;
        let s = secrets.get("media-keyring").await.unwrap();

        // Backend: sign with the active key as the Secret shows it right now.
        let data = s.data.as_ref().unwrap();
        let kid = String::from_utf8(data["active-kid"].0.clone()).unwrap();
        let signer = Signer::with_key(&kid, &data["active-key"].0);
        kids.insert(kid.clone());
        let exp = now() + 5;
        let url = signer
            .url(&UrlRequest {
                base_url: &base,
                path: "/videos/films/a.mp4",
                exp,
                nbf: None,
                prefix: None,
                ip: None,
                carrier: Carrier::Query,
            })
            .unwrap();
        if early.is_none() {
            early = Some((url.clone(), exp));
        }
        let mut to_fetch = vec![url];
        if let Some((u, exp)) = &early
            && now() < *exp
        {
            to_fetch.push(u.clone());
        }
        for (j, u) in to_fetch.iter().enumerate() {
            let offset = (i * 7919 % 3000) as usize * 1000;
            let range = format!("bytes={offset}-{}", offset + 65_535);
            let req = http::Request::get(u).header("range", &range).body(Empty::new()).unwrap();
            let resp = http.request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                status,
                206,
                "signed with {kid} at +{}s: {} {}\nagent log:\n{}",
                start.elapsed().as_secs(),
                status,
                String::from_utf8_lossy(&body),
                agent.log()
            );
            assert_eq!(&body[..], &film[offset..offset + 65_536]);
            if j == 1 {
                early_token_ok += 1;
            } else {
                ok += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    kubelet.abort();
    assert!(kids.len() >= 2, "the test ran through a promotion: signed with {kids:?}");
    assert!(ok > 50 && early_token_ok > 5, "{ok} fresh and {early_token_ok} early-token ranges served");
    let (ring, _) = common::keyring(&client, &ns, "media").await.unwrap();
    assert!(!ring.keys().iter().any(|k| k.kid() == kids.iter().next().unwrap()), "the first key was removed");
}
