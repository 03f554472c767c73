//! The envtest of this project: a real etcd, kube-apiserver and kube-controller-manager on loopback, built from Go
//! modules by `tests/controlplane/build.sh`, shared by every test of one test binary.
//!
//! Processes are started from a thread that lives as long as the test binary, with `PR_SET_PDEATHSIG`, so none
//! outlives it, even when a test panics or the binary is killed; an `atexit` hook stops them and removes the
//! temporary directory on a normal exit.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

mod fuse;
mod node;
mod traefik;
pub use fuse::{Hang, HangFs, hangfs_binary};
pub use node::{NODE_IP, NODE_NAME, Node, NodeOptions, clean_host};
pub use traefik::{Leaf, TRAEFIK_VERSION, TestCa, Traefik};

/// Kubernetes version of the binaries (must match tests/controlplane/go.mod).
pub const K8S_VERSION: &str = "v1.35.4";
const ETCD_VERSION: &str = "v3.6.5";
const ADMIN_TOKEN: &str = "vd-envtest-admin-token";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "control plane binary {0} is missing; build them with `bash tests/controlplane/build.sh` (or set VD_CONTROLPLANE_BIN)"
    )]
    MissingBinary(PathBuf),
    #[error("the S3 server is missing at {0}; build it with `bash tests/s3/build.sh` (or set VD_VERSITYGW)")]
    MissingS3(PathBuf),
    #[error("Traefik is missing at {0}; build it with `bash tests/traefik/build.sh` (or set VD_TRAEFIK)")]
    MissingTraefik(PathBuf),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0} did not become ready: {1}")]
    NotReady(&'static str, String),
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("invalid CRD file {0}: {1}")]
    Crd(PathBuf, String),
    #[error("the node cannot start: {0}")]
    Node(String),
    #[error("hangfs: {0}")]
    Fuse(String),
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Where the binaries are: `VD_CONTROLPLANE_BIN`, or the cache directory `build.sh` fills.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("VD_CONTROLPLANE_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
        home.join(format!(".cache/videodelivery/controlplane/{K8S_VERSION}-etcd{ETCD_VERSION}"))
    })
}

/// The path of one binary (etcd, kube-apiserver, kube-controller-manager, kubectl, helm), or a clear error.
pub fn binary(name: &str) -> Result<PathBuf, Error> {
    let p = bin_dir().join(name);
    if p.exists() { Ok(p) } else { Err(Error::MissingBinary(p)) }
}

/// A running control plane. Get the shared one with [`ControlPlane::shared`].
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    pids: Vec<u32>,
    ca: PathBuf,
}

/// Where a control plane listens. The default (loopback, RBAC only) is what most tests need; a [`Node`] needs the
/// API server on an address its pods can reach (pods cannot use loopback) and the node's own users.
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// The address the API server binds to and advertises.
    pub address: String,
    /// A node name: adds the `Node` authorizer, the tokens of `system:node:<name>` and `system:kube-proxy`, and
    /// makes the API server reach kubelets by InternalIP (there is no DNS for node names here).
    pub node: Option<String>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions { address: "127.0.0.1".into(), node: None }
    }
}

/// Token of the node's kubelet (user `system:node:<node>`).
pub(crate) const NODE_TOKEN: &str = "vd-envtest-node-token";
/// Token of kube-proxy (user `system:kube-proxy`, bound to `system:node-proxier` by the API server's bootstrap).
pub(crate) const PROXY_TOKEN: &str = "vd-envtest-proxy-token";

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static DIR: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn stop_all() {
    if let Ok(pids) = CHILDREN.lock() {
        for pid in pids.iter() {
            // SAFETY: plain signal to a process this binary started.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    if let Ok(dirs) = DIR.lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use. Panics with the build command when the
    /// binaries are missing: tests that need it fail, they never skip.
    pub fn shared() -> &'static ControlPlane {
        let started = SHARED.get_or_init(|| {
            // Started from a thread that never ends: PDEATHSIG fires when the *thread* that forked exits.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("vd-controlplane".into())
                .spawn(move || {
                    let _ = tx.send(ControlPlane::start(&ControlPlaneOptions::default()).map_err(|e| e.to_string()));
                    loop {
                        std::thread::park();
                    }
                })
                .expect("spawn the control plane thread");
            rx.recv().unwrap_or_else(|_| Err("the control plane thread died".into()))
        });
        match started {
            Ok(cp) => cp,
            Err(e) => panic!("cannot start the test control plane: {e}"),
        }
    }

    /// Starts a control plane with `options`. Its processes die with the calling thread (`PR_SET_PDEATHSIG`), so
    /// call it from a thread that lives as long as the control plane should; an `atexit` hook stops them too.
    ///
    /// A start whose API server never answers is retried once with fresh ports and data, after printing why: a
    /// loaded CI machine has been seen to lose one (the logs of the failed try are in the message).
    pub fn start(options: &ControlPlaneOptions) -> Result<ControlPlane, Error> {
        match Self::start_once(options) {
            Err(e @ Error::NotReady("kube-apiserver", _)) => {
                eprintln!("vd-testsupport: the control plane did not start, trying once more: {e}");
                Self::start_once(options)
            }
            other => other,
        }
    }

    fn start_once(options: &ControlPlaneOptions) -> Result<ControlPlane, Error> {
        let etcd = binary("etcd")?;
        let apiserver = binary("kube-apiserver")?;
        let kcm = binary("kube-controller-manager")?;
        let dir = tempfile::Builder::new().prefix("vd-envtest-").tempdir().map_err(io("temp dir"))?.keep();
        DIR.lock().unwrap_or_else(|p| p.into_inner()).push(dir.clone());
        static ATEXIT: std::sync::Once = std::sync::Once::new();
        // SAFETY: registering a plain extern "C" function.
        ATEXIT.call_once(|| unsafe {
            libc::atexit(stop_all);
        });

        let sa_key = dir.join("sa.key");
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .map_err(io("run openssl to make the service-account key"))?;
        if !status.success() {
            return Err(Error::NotReady("openssl", status.to_string()));
        }
        let mut tokens = format!("{ADMIN_TOKEN},vd-admin,vd-admin-uid,\"system:masters\"\n");
        if let Some(node) = &options.node {
            tokens.push_str(&format!("{NODE_TOKEN},system:node:{node},vd-node-uid,\"system:nodes\"\n"));
            tokens.push_str(&format!("{PROXY_TOKEN},system:kube-proxy,vd-proxy-uid\n"));
        }
        std::fs::write(dir.join("tokens.csv"), tokens).map_err(io("write the token file"))?;

        let [etcd_port, peer_port, api_port] = [free_port()?, free_port()?, free_port()?];
        let log = |name: &str| std::fs::File::create(dir.join(format!("{name}.log"))).map_err(io("log file"));
        let mut pids = Vec::new();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        pids.push(spawn(
            Command::new(etcd)
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .arg(format!("--listen-client-urls={etcd_url}"))
                .arg(format!("--advertise-client-urls={etcd_url}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"))
                .arg("--unsafe-no-fsync")
                .stdout(log("etcd")?)
                .stderr(log("etcd.err")?),
        )?);
        let certs = dir.join("certs");
        let address = &options.address;
        let mut apiserver = Command::new(apiserver);
        if options.node.is_some() {
            apiserver.arg("--authorization-mode=Node,RBAC").arg("--kubelet-preferred-address-types=InternalIP");
        } else {
            apiserver.arg("--authorization-mode=RBAC");
        }
        pids.push(spawn(
            apiserver
                .arg(format!("--etcd-servers={etcd_url}"))
                .arg(format!("--cert-dir={}", certs.display()))
                .arg(format!("--secure-port={api_port}"))
                .arg(format!("--bind-address={address}"))
                .arg(format!("--advertise-address={address}"))
                .arg(format!("--token-auth-file={}", dir.join("tokens.csv").display()))
                .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
                .arg(format!("--service-account-key-file={}", sa_key.display()))
                .arg(format!("--service-account-signing-key-file={}", sa_key.display()))
                .arg("--service-cluster-ip-range=10.96.0.0/16")
                .arg("--allow-privileged=true")
                .stdout(log("kube-apiserver")?)
                .stderr(log("kube-apiserver.err")?),
        )?);
        // Wait for the self-signed serving certificate, then write a kubeconfig that trusts it.
        let cert = certs.join("apiserver.crt");
        wait_for("kube-apiserver certificate", Duration::from_secs(60), || cert.exists())?;
        std::thread::sleep(Duration::from_millis(200));
        let ca = std::fs::read(&cert).map_err(io("read apiserver.crt"))?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(address, api_port, &ca, ADMIN_TOKEN))
            .map_err(io("write kubeconfig"))?;

        let cp = ControlPlane { dir: dir.clone(), kubeconfig: kubeconfig.clone(), pids, ca: cert.clone() };
        register(&cp.pids);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(io("runtime"))?;
        if let Err(e) = rt.block_on(cp.wait_ready()) {
            let tail = |name: &str| {
                let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(8)..].join("\n")
            };
            let why = format!(
                "{e}\n--- kube-apiserver.err\n{}\n--- etcd.err\n{}",
                tail("kube-apiserver.err"),
                tail("etcd.err")
            );
            for pid in &cp.pids {
                // SAFETY: plain signal to a process this function started.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
            return Err(Error::NotReady("kube-apiserver", why));
        }

        let mut cp = cp;
        cp.pids.push(spawn(
            Command::new(kcm)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg("--leader-elect=false")
                .arg(format!("--service-account-private-key-file={}", sa_key.display()))
                .arg(format!("--root-ca-file={}", cert.display()))
                .arg("--use-service-account-credentials=false")
                .arg("--bind-address=127.0.0.1")
                .arg("--secure-port=0")
                .arg("--controllers=*")
                .stdout(log("kube-controller-manager")?)
                .stderr(log("kube-controller-manager.err")?),
        )?);
        register(&cp.pids);
        rt.block_on(cp.install_crds())?;
        Ok(cp)
    }

    async fn wait_ready(&self) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.client().await {
                Ok(client) => {
                    let req = http_get("/readyz");
                    match client.request_text(req).await {
                        Ok(body) if body.trim() == "ok" => return Ok(()),
                        Ok(body) => last = body,
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(Error::NotReady("kube-apiserver", format!("{last} (logs in {})", self.dir.display())))
    }

    /// Installs every CRD under the repository's `crds/` and waits until each is established.
    async fn install_crds(&self) -> Result<(), Error> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
        let client = self.client().await?;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
            let crd: CustomResourceDefinition =
                serde_yaml_ng::from_str(&text).map_err(|e| Error::Crd(path.clone(), e.to_string()))?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.create(&PostParams::default(), &crd).await?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let current = api.get(&name).await?;
                let established = current
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Error::NotReady("CRD", format!("{name} was not established within 30s")));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// A client with cluster-admin rights.
    pub async fn client(&self) -> Result<Client, Error> {
        install_crypto_provider();
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// The admin kubeconfig, for kubectl and helm.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where the processes' logs and data live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig like the admin's that authenticates with `token` instead (for the node's components).
    pub(crate) fn kubeconfig_with_token(&self, name: &str, token: &str) -> Result<PathBuf, Error> {
        let text = std::fs::read_to_string(&self.kubeconfig).map_err(io("read kubeconfig"))?;
        let path = self.dir.join(name);
        std::fs::write(&path, text.replace(ADMIN_TOKEN, token)).map_err(io("write kubeconfig"))?;
        Ok(path)
    }

    /// The API server's serving certificate bundle (what the kubeconfigs trust).
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// A fresh namespace with a unique name, so tests sharing the control plane do not see each other.
    pub async fn namespace(&self, hint: &str) -> Result<String, Error> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{hint}-{}-{n}", std::process::id());
        let ns =
            Namespace { metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() }, ..Default::default() };
        Api::<Namespace>::all(self.client().await?).create(&PostParams::default(), &ns).await?;
        Ok(name)
    }

    /// A client that acts as a ServiceAccount (created if needed), with a token from the TokenRequest API, so
    /// RBAC is enforced exactly as for a pod.
    pub async fn client_as(&self, namespace: &str, service_account: &str) -> Result<Client, Error> {
        let path = self.kubeconfig_as(namespace, service_account).await?;
        let config =
            Config::from_custom_kubeconfig(Kubeconfig::read_from(&path)?, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// A kubeconfig file that acts as a ServiceAccount (created if needed), for a process the test starts: what a
    /// pod running as that ServiceAccount would get.
    pub async fn kubeconfig_as(&self, namespace: &str, service_account: &str) -> Result<PathBuf, Error> {
        let admin = self.client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        if sas.get_opt(service_account).await?.is_none() {
            let sa = ServiceAccount {
                metadata: ObjectMeta { name: Some(service_account.into()), ..Default::default() },
                ..Default::default()
            };
            sas.create(&PostParams::default(), &sa).await?;
        }
        let req = TokenRequest {
            spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(3600), ..Default::default() },
            ..Default::default()
        };
        let token = sas.create_token_request(service_account, &PostParams::default(), &req).await?;
        let token = token.status.map(|s| s.token).unwrap_or_default();
        let text = std::fs::read_to_string(&self.kubeconfig).map_err(io("read kubeconfig"))?;
        let path = self.dir.join(format!("kubeconfig-{namespace}-{service_account}"));
        std::fs::write(&path, text.replace(ADMIN_TOKEN, &token)).map_err(io("write kubeconfig"))?;
        Ok(path)
    }
}

/// In a workspace build both rustls providers are compiled in (kube picks ring, object_store aws-lc-rs), so rustls
/// cannot choose one by itself: pick ring for the whole test process, once.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn http_get(path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(path).body(Vec::new()).expect("a static request is valid")
}

fn register(pids: &[u32]) {
    let mut all = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    for pid in pids {
        if !all.contains(pid) {
            all.push(*pid);
        }
    }
}

fn spawn(cmd: &mut Command) -> Result<u32, Error> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the child when this thread ends.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child: Child = cmd.stdin(Stdio::null()).spawn().map_err(io(format!("start {:?}", cmd.get_program())))?;
    Ok(child.id())
}

fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("find a free port"))?;
    Ok(l.local_addr().map_err(io("find a free port"))?.port())
}

/// Polls `ok` every 100 ms until it holds, or fails naming `what` after `limit`.
fn wait_for(what: &'static str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            return Err(Error::NotReady(what, format!("not within {limit:?}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn kubeconfig_yaml(address: &str, port: u16, ca: &[u8], token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: https://{address}:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: admin\ncurrent-context: envtest\n"
    )
}

/// A process a test starts (an operator, an agent): killed when dropped, and by the kernel if the test thread
/// dies first. Its output goes to a log file, printed by [`Process::log`] when a test needs to explain a failure.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Result<Process, Error> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
        let err = out.try_clone().map_err(io("clone a log handle"))?;
        // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the child when this thread ends.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io(format!("start {:?}", cmd.get_program())))?;
        Ok(Process { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// What the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `grace` for the exit status.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes files into `dir` the way the kubelet updates a mounted Secret: a fresh timestamped directory, an atomic
/// swap of the `..data` symlink, and per-file symlinks through it. Readers never see a half-written set.
pub fn write_secret_volume(dir: &Path, files: &[(&str, &[u8])]) -> Result<(), Error> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let stamp = format!("..{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh).map_err(io("create a secret volume directory"))?;
    for (name, bytes) in files {
        std::fs::write(fresh.join(name), bytes).map_err(io(format!("write {name}")))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(io("link ..data_tmp"))?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data")).map_err(io("swap ..data"))?;
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link).map_err(io("link a secret file"))?;
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// Does what a kubelet would for pods that have no node here: marks every pod matching `selector` in `namespace`
/// Running and Ready, so Deployments report ready and available replicas. Returns how many it marked.
pub async fn mark_pods_ready(client: &Client, namespace: &str, selector: &str) -> Result<usize, Error> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{ListParams, Patch, PatchParams};
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut n = 0;
    for pod in pods.list(&ListParams::default().labels(selector)).await?.items {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = serde_json::json!({"status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            ],
        }});
        let name = pod.metadata.name.clone().unwrap_or_default();
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        n += 1;
    }
    Ok(n)
}

/// versitygw, a real S3 server, with its posix backend: buckets are folders of `root`, objects are files.
/// Built by `tests/s3/build.sh`.
pub struct S3Server {
    _process: Process,
    pub endpoint: String,
    pub root: tempfile::TempDir,
}

impl S3Server {
    pub const ACCESS_KEY: &'static str = "AKIATESTVD";
    pub const SECRET_KEY: &'static str = "vd-test-secret";

    /// Starts one on a free loopback port. Fails, naming the build command, when the binary is missing.
    pub fn start() -> Result<S3Server, Error> {
        Self::start_on("127.0.0.1")
    }

    /// Starts one on a free port of `address` (the node address, for pods to reach it).
    pub fn start_on(address: &str) -> Result<S3Server, Error> {
        let bin = std::env::var_os("VD_VERSITYGW").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
            home.join(".cache/videodelivery/s3/versitygw-v1.8.0/versitygw")
        });
        if !bin.exists() {
            return Err(Error::MissingS3(bin));
        }
        let root = tempfile::tempdir().map_err(io("temp dir"))?;
        let port = free_port()?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--access", Self::ACCESS_KEY, "--secret", Self::SECRET_KEY, "--port", &format!("{address}:{port}")])
            .arg("posix")
            .arg(root.path());
        let log = std::env::temp_dir().join(format!("versitygw-{port}.log"));
        let process = Process::spawn(cmd, log)?;
        wait_for("versitygw", Duration::from_secs(10), || std::net::TcpStream::connect((address, port)).is_ok())?;
        Ok(S3Server { _process: process, endpoint: format!("http://{address}:{port}"), root })
    }

    /// Creates a bucket (a folder) and writes an object into it.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let path = self.root.path().join(bucket).join(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create a bucket folder"))?;
        }
        std::fs::write(&path, bytes).map_err(io(format!("write {}", path.display())))
    }
}
