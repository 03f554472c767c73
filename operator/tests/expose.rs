//! `spec.tls` and `spec.expose` against a real API server, with the Gateway API's real CRDs: what the operator
//! makes, deletes and says, and what the API server refuses.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Operator, condition, eventually};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use vd_testsupport::ControlPlane;
use videodelivery_operator::crd::VideoDelivery;
use videodelivery_operator::resources;

const LONG: Duration = Duration::from_secs(60);

/// Waits until the Exposed condition has `status` and `reason`; `None` waits until there is none.
async fn exposed(client: &Client, ns: &str, name: &str, want: Option<(&str, &str)>) -> VideoDelivery {
    let api: Api<VideoDelivery> = Api::namespaced(client.clone(), ns);
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let vd = api.get(name).await.unwrap();
        let c = condition(&vd, "Exposed").map(|c| (c.status.as_str(), c.reason.as_str()));
        if c == want {
            return vd;
        }
        let seen = condition(&vd, "Exposed").map(|c| format!("{} {}: {}", c.status, c.reason, c.message));
        assert!(std::time::Instant::now() < deadline, "{name} Exposed {want:?} not within {LONG:?}; it says {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn warning(client: &Client, ns: &str, reason: &str) -> Option<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = events.list(&ListParams::default()).await.ok()?;
    list.items
        .into_iter()
        .find(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))?
        .message
}

fn url(vd: &VideoDelivery) -> String {
    vd.status.as_ref().and_then(|s| s.url.clone()).unwrap_or_default()
}

/// One story, in order, because the Gateway API's CRDs are installed half-way (they are cluster-wide).
#[tokio::test]
async fn expose_makes_an_http_route_then_an_ingress_then_nothing() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("expose").await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    let vds: Api<VideoDelivery> = Api::namespaced(client.clone(), &ns);
    common::create(
        &client,
        &ns,
        "media",
        "storage: {url: 's3://videos'}\nagents: {replicas: 1}\n\
         expose: {gateway: {parentRefs: [{name: public, sectionName: https}], hostnames: [video.example.com, alt.example.com]}}",
    )
    .await;

    // Without the Gateway API the operator keeps working: keys and agents reconcile, exposure is a condition.
    let vd = exposed(&client, &ns, "media", Some(("False", "GatewayAPIUnavailable"))).await;
    assert_eq!(condition(&vd, "KeysReady").unwrap().status, "True");
    assert_eq!(condition(&vd, "Ready").unwrap().status, "False");
    assert_eq!(url(&vd), format!("http://media-agent.{ns}.svc/videos/"), "the in-cluster URL while not exposed");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(deployments.get_opt("media-agent").await.unwrap().is_some(), "agents are deployed meanwhile");
    let note =
        eventually("a GatewayAPIUnavailable warning", LONG, || warning(&client, &ns, "GatewayAPIUnavailable")).await;
    assert!(note.contains("install its CRDs, or use expose.ingress"), "{note}");

    // Once the CRDs are there (nothing watches for them: the operator looks again within 20 s), the route appears.
    common::install_gateway_api_crds(cp);
    common::create_gateway(&client, &ns, "public").await;
    // Applied is not yet served: until a Gateway answers, Exposed says so and Ready stays False.
    let vd = exposed(&client, &ns, "media", Some(("False", "HTTPRoutePending"))).await;
    let message = &condition(&vd, "Exposed").unwrap().message;
    assert!(message.contains("no Gateway has accepted HTTPRoute media yet"), "{message}");
    assert!(message.contains(&format!("{ns}/public")), "{message}");
    assert_eq!(condition(&vd, "Ready").unwrap().status, "False");
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resources::http_route_api_resource());
    // The Gateway's controller refuses the route (as a gateway writes it): its reason and message reach the user.
    common::gateway_says(
        &routes,
        "media",
        "False",
        "NotAllowedByListeners",
        "no listener allows routes from this namespace",
    )
    .await;
    let vd = exposed(&client, &ns, "media", Some(("False", "RouteNotAccepted"))).await;
    let message = &condition(&vd, "Exposed").unwrap().message;
    assert_eq!(
        message,
        &format!(
            "Gateway {ns}/public did not accept HTTPRoute media: Accepted=False (NotAllowedByListeners: no listener \
             allows routes from this namespace)"
        )
    );
    assert_eq!(url(&vd), format!("http://media-agent.{ns}.svc/videos/"), "not public while refused");
    // Then it accepts it.
    common::gateway_says(&routes, "media", "True", "Accepted", "").await;
    let vd = exposed(&client, &ns, "media", Some(("True", "HTTPRouteAccepted"))).await;
    let route = routes.get("media").await.unwrap();
    assert_eq!(route.metadata.owner_references.as_ref().unwrap()[0].uid, vd.metadata.uid.clone().unwrap());
    assert!(
        route
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|m| m.manager.as_deref() == Some("videodelivery-operator") && m.operation.as_deref() == Some("Apply")),
        "applied with Server-Side Apply by the operator's field manager"
    );
    let spec = &route.data["spec"];
    assert_eq!(spec["parentRefs"][0]["name"], "public");
    assert_eq!(spec["parentRefs"][0]["sectionName"], "https");
    assert_eq!(spec["hostnames"], serde_json::json!(["video.example.com", "alt.example.com"]));
    assert_eq!(spec["rules"][0]["matches"][0]["path"], serde_json::json!({"type": "PathPrefix", "value": "/videos"}));
    assert_eq!(spec["rules"][0]["backendRefs"][0]["name"], "media-agent");
    assert_eq!(spec["rules"][0]["backendRefs"][0]["port"], 80);
    assert_eq!(url(&vd), "https://video.example.com/videos/", "the listener speaks HTTPS");
    let message = &condition(&vd, "Exposed").unwrap().message;
    assert!(message.contains("HTTPRoute media"), "{message}");

    // Ready once the agents are; its message is the public URL.
    eventually("agents ready", LONG, || async {
        vd_testsupport::mark_pods_ready(&client, &ns, &common::selector("media")).await.ok()?;
        (deployments.get("media-agent").await.ok()?.status?.ready_replicas? == 1).then_some(())
    })
    .await;
    let vd = common::wait_ready(&client, &ns, "media", "True", Some("Ready")).await;
    assert_eq!(condition(&vd, "Ready").unwrap().message, "serving at https://video.example.com/videos/");

    // Switching to an Ingress deletes the route and makes the Ingress.
    let to_ingress = serde_json::json!({"spec": {"expose": {"gateway": null, "ingress": {
        "className": "nginx", "host": "media.example.org", "tlsSecretName": "media-public-tls",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}}}}});
    vds.patch("media", &PatchParams::default(), &Patch::Merge(&to_ingress)).await.unwrap();
    let vd = exposed(&client, &ns, "media", Some(("False", "IngressPending"))).await;
    let message = &condition(&vd, "Exposed").unwrap().message;
    assert!(message.contains("no ingress controller has published an address for Ingress media"), "{message}");
    assert!(routes.get_opt("media").await.unwrap().is_none(), "the HTTPRoute is deleted before the Ingress is made");
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    // The ingress controller publishes its address, as a controller does.
    let address = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}});
    ingresses.patch_status("media", &PatchParams::default(), &Patch::Merge(&address)).await.unwrap();
    let vd = exposed(&client, &ns, "media", Some(("True", "IngressAddressed"))).await;
    let message = &condition(&vd, "Exposed").unwrap().message;
    assert!(message.ends_with("(its controller serves it at 192.0.2.10)"), "{message}");
    let ingress = ingresses.get("media").await.unwrap();
    assert_eq!(ingress.metadata.annotations.as_ref().unwrap()["cert-manager.io/cluster-issuer"], "letsencrypt");
    assert_eq!(ingress.metadata.owner_references.as_ref().unwrap()[0].uid, vd.metadata.uid.clone().unwrap());
    let spec = ingress.spec.unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let tls = &spec.tls.unwrap()[0];
    assert_eq!(tls.secret_name.as_deref(), Some("media-public-tls"));
    assert_eq!(tls.hosts.as_deref(), Some(&["media.example.org".to_string()][..]));
    let rule = &spec.rules.unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("media.example.org"));
    let path = &rule.http.as_ref().unwrap().paths[0];
    assert_eq!((path.path.as_deref(), path.path_type.as_str()), (Some("/videos"), "Prefix"));
    assert_eq!(path.backend.service.as_ref().unwrap().name, "media-agent");
    assert_eq!(url(&vd), "https://media.example.org/videos/");

    // Removing expose deletes the Ingress and the condition; status.url is the in-cluster one again.
    let off = serde_json::json!({"spec": {"expose": null}});
    vds.patch("media", &PatchParams::default(), &Patch::Merge(&off)).await.unwrap();
    let vd = exposed(&client, &ns, "media", None).await;
    assert!(ingresses.get_opt("media").await.unwrap().is_none());
    assert_eq!(url(&vd), format!("http://media-agent.{ns}.svc/videos/"));
    common::wait_ready(&client, &ns, "media", "True", Some("Ready")).await;
}

fn secret(name: &str, type_: &str, keys: &[&str]) -> Secret {
    let data: BTreeMap<String, ByteString> =
        keys.iter().map(|k| (k.to_string(), ByteString(b"not a real PEM".to_vec()))).collect();
    Secret {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        type_: Some(type_.into()),
        data: Some(data),
        ..Default::default()
    }
}

#[tokio::test]
async fn tls_mounts_a_tls_secret_and_says_when_it_is_missing_or_wrong() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("tls").await.unwrap();
    let _op = Operator::start(cp, &ns, &[]);
    common::create(
        &client,
        &ns,
        "secure",
        "storage: {url: 's3://videos'}\nagents: {replicas: 1}\nservice: {port: 443}\ntls: {secretName: agent-tls}",
    )
    .await;
    let vd = common::wait_ready(&client, &ns, "secure", "False", Some("TLSSecretMissing")).await;
    let message = &condition(&vd, "Ready").unwrap().message;
    assert!(message.contains("Secret \"agent-tls\" (tls.secretName) does not exist"), "{message}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(deployments.get_opt("secure-agent").await.unwrap().is_none(), "no pod that could never start");

    // The Secret watch sees it at once: an Opaque Secret is the wrong type.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets.create(&PostParams::default(), &secret("agent-tls", "Opaque", &["cert.pem"])).await.unwrap();
    let vd = common::wait_ready(&client, &ns, "secure", "False", Some("TLSSecretInvalid")).await;
    let message = &condition(&vd, "Ready").unwrap().message;
    assert!(message.contains("must be a kubernetes.io/tls Secret with tls.crt and tls.key"), "{message}");
    assert!(!message.contains("not a real PEM"), "never the Secret's content");

    // A Secret's type cannot change: replace it with a real TLS Secret, and the agents mount it.
    secrets.delete("agent-tls", &DeleteParams::default()).await.unwrap();
    let tls = secret("agent-tls", "kubernetes.io/tls", &["tls.crt", "tls.key"]);
    secrets.create(&PostParams::default(), &tls).await.unwrap();
    let d =
        eventually("the agents' Deployment", LONG, || async { deployments.get_opt("secure-agent").await.ok()? }).await;
    let pod = d.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    for want in ["--tls-cert=/etc/videodelivery/tls/tls.crt", "--tls-key=/etc/videodelivery/tls/tls.key"] {
        assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
    }
    let volume = pod.volumes.unwrap().into_iter().find(|v| v.name == "tls").unwrap();
    assert_eq!(volume.secret.unwrap().secret_name.as_deref(), Some("agent-tls"));
    let mount = c.volume_mounts.clone().unwrap().into_iter().find(|m| m.name == "tls").unwrap();
    assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/etc/videodelivery/tls", Some(true)));
    let service = Api::<Service>::namespaced(client.clone(), &ns).get("secure-agent").await.unwrap();
    let port = &service.spec.unwrap().ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.app_protocol.as_deref(), port.port), (Some("https"), Some("https"), 443));
    let vd = common::wait_ready(&client, &ns, "secure", "False", Some("AgentsUnavailable")).await;
    assert_eq!(url(&vd), format!("https://secure-agent.{ns}.svc/videos/"));
}

#[tokio::test]
async fn bad_expose_and_tls_specs_are_refused_with_a_readable_message() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("expose-invalid").await.unwrap();
    common::lower_signing_floors(cp);
    let api: Api<VideoDelivery> = Api::namespaced(client, &ns);
    let s3 = "storage: {url: 's3://videos'}";
    let gw = "parentRefs: [{name: public}]";
    for (spec, expected) in [
        (
            format!("{s3}\nexpose: {{gateway: {{{gw}, hostnames: [a.example]}}, ingress: {{host: a.example}}}}"),
            "set exactly one of expose.gateway (a Gateway API HTTPRoute) or expose.ingress (an Ingress), not both",
        ),
        (format!("{s3}\nexpose: {{}}"), "set exactly one of expose.gateway"),
        (
            format!("{s3}\nexpose: {{gateway: {{{gw}, hostnames: []}}}}"),
            "expose.gateway.hostnames must list at least one host name viewers use",
        ),
        (
            format!("{s3}\nexpose: {{gateway: {{parentRefs: [], hostnames: [a.example]}}}}"),
            "expose.gateway.parentRefs must name at least one Gateway",
        ),
        (
            format!("{s3}\nexpose: {{gateway: {{{gw}, hostnames: ['*.example.com']}}}}"),
            "each expose.gateway.hostnames entry must be a host name like video.example.com",
        ),
        (
            format!("{s3}\nexpose: {{ingress: {{host: 'Video.Example.com'}}}}"),
            "expose.ingress.host must be a host name",
        ),
        (format!("{s3}\nexpose: {{ingress: {{host: 'https://video.example.com'}}}}"), "no wildcard, port, scheme"),
        (format!("{s3}\nexpose: {{ingress: {{host: '192.0.2.1'}}}}"), "or IP address"),
        (
            format!("{s3}\nexpose: {{ingress: {{host: a.example, annotations: {{'bad key!': x}}}}}}"),
            "each expose.ingress.annotations key must be a qualified name",
        ),
        (format!("{s3}\ntls: {{secretName: 'My_Cert'}}"), "tls.secretName must be the name of a Secret"),
    ] {
        let vd = VideoDelivery::new("bad", common::spec(&spec));
        match api.create(&PostParams::default(), &vd).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{spec}: {}", s.message);
                assert!(s.message.contains(expected), "{spec}: {:?} lacks {expected:?}", s.message);
            }
            other => panic!("{spec}: accepted or failed otherwise: {other:?}"),
        }
    }
    // What the example shows is accepted.
    let good = format!(
        "{s3}\ntls: {{secretName: agent-tls}}\nexpose: {{gateway: {{parentRefs: [{{name: public, namespace: gateways, \
         sectionName: https}}], hostnames: [video.example.com]}}}}"
    );
    let dry = PostParams { dry_run: true, ..Default::default() };
    api.create(&dry, &VideoDelivery::new("good", common::spec(&good))).await.unwrap();
}
