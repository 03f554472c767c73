//! What `scripts/dev-cluster.sh` runs in the background: a one-node cluster on this machine (the test node) with
//! the chart installed from local images, until SIGTERM or SIGINT, then a teardown that leaves nothing behind.
//!
//! Usage: vd-dev-cluster --bin-dir DIR --kubeconfig PATH   (DIR holds the agent and operator binaries)
//!        vd-dev-cluster --cleanup                          (removes what a killed run left)

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vd_testsupport::{Node, NodeOptions};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(PathBuf::from);
    if args.iter().any(|a| a == "--cleanup") {
        if let Err(e) = vd_testsupport::clean_host() {
            eprintln!("vd-dev-cluster: {e}");
            std::process::exit(1);
        }
        return;
    }
    let (Some(bin_dir), Some(kubeconfig)) = (value("--bin-dir"), value("--kubeconfig")) else {
        eprintln!("usage: vd-dev-cluster --bin-dir DIR --kubeconfig PATH | --cleanup");
        std::process::exit(2);
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    // The node's processes die with this (main) thread, and are stopped in order when `node` drops.
    let node = match Node::start(&NodeOptions::default()) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("vd-dev-cluster: {e}");
            std::process::exit(1);
        }
    };
    let result = install(&node, &bin_dir, &kubeconfig);
    if let Err(e) = &result {
        eprintln!("vd-dev-cluster: {e}");
    } else {
        eprintln!("vd-dev-cluster: ready; kubeconfig {}", kubeconfig.display());
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("vd-dev-cluster: stopping");
    }
    let _ = std::fs::remove_file(&kubeconfig);
    drop(node);
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}

/// Imports the images, installs the chart with its default values and waits until the operator is available.
fn install(node: &Node, bin_dir: &std::path::Path, kubeconfig: &std::path::Path) -> Result<(), String> {
    node.import_images(&["agent", "operator"], Some(bin_dir)).map_err(|e| e.to_string())?;
    let cp = node.control_plane();
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charts/videodelivery");
    let out = Command::new(vd_testsupport::binary("helm").map_err(|e| e.to_string())?)
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(["install", "videodelivery"])
        .arg(&chart)
        // The control plane installed the CRD from crds/ at start: the release takes it over.
        .args(["--namespace", "videodelivery", "--create-namespace", "--take-ownership", "--wait", "--timeout", "180s"])
        .env("HELM_CACHE_HOME", cp.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", cp.dir().join("helm/config"))
        .env("HELM_DATA_HOME", cp.dir().join("helm/data"))
        .output()
        .map_err(|e| format!("run helm: {e}"))?;
    if !out.status.success() {
        return Err(format!("helm install: {}\n{}", String::from_utf8_lossy(&out.stderr), node.log_tails()));
    }
    if let Some(parent) = kubeconfig.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    std::fs::copy(cp.kubeconfig(), kubeconfig).map_err(|e| format!("write {}: {e}", kubeconfig.display()))?;
    Ok(())
}
