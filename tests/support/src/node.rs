//! A real one-node cluster: the control plane on the node address, and containerd, runc, the bridge CNI plugin,
//! kubelet, kube-proxy (iptables) and kube-scheduler on this machine, built by `tests/node/build.sh`. Pods run
//! from images imported with `scripts/images.sh`, so nothing is pulled from a registry.
//!
//! Needs root. One node per machine: the bridge, the addresses and the directory are fixed, and a lock file says
//! who holds them (a test binary or `scripts/dev-cluster.sh`). Teardown undoes everything the node changed on the
//! host: mounts, network namespaces, the bridge, the address, iptables rules and nftables tables, sysctls, cgroups
//! and files. It runs on drop, at exit of a test binary, and at the next start when a run was killed.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node as KubeNode, ServiceAccount};
use kube::api::Api;

use crate::{ControlPlane, ControlPlaneOptions, Error, NODE_TOKEN, PROXY_TOKEN, io, wait_for};

/// The node's address: a /32 on `lo`, which pods reach through the bridge's gateway (they cannot reach loopback).
pub const NODE_IP: &str = "10.87.0.1";
/// The node's name (and its kubelet's user, `system:node:vd-node`).
pub const NODE_NAME: &str = "vd-node";
const BRIDGE: &str = "vdbr0";
const POD_SUBNET: &str = "10.88.0.0/16";
const POD_GATEWAY: &str = "10.88.0.1";
const CNI_NETWORK: &str = "vdnet";
/// Short on purpose: containerd's shim socket directory must stay within 42 characters.
const DIR: &str = "/run/vd-node";
const LOCK: &str = "/run/vd-node.lock";
const SANDBOX_IMAGE: &str = "registry.local/pause:3.10";
/// Host settings the node changes (kube-proxy, kubelet and the bridge plugin write them); put back at teardown.
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
];
/// The node's own programs: what is left running of them after a killed run is stopped at the next start. (The
/// control plane's programs live in the same directory but are not the node's: other tests may be running them.)
const NODE_PROGRAMS: &[&str] =
    &["containerd", "containerd-shim-runc-v2", "runc", "kubelet", "kube-proxy", "kube-scheduler"];
/// Host paths the node's components create when missing; removed at teardown only if they were missing.
const HOST_PATHS: &[&str] = &["/var/lib/kubelet", "/var/lib/cni", "/etc/cni", "/opt/cni", "/var/log/pods"];

/// How the node runs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// kubelet's `syncFrequency`: how often it resyncs each pod, and so how late at most a Secret update reaches
    /// a mounted volume (plus its cache TTL). kubelet's default is 1m.
    pub sync_frequency: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions { sync_frequency: Duration::from_secs(60) }
    }
}

/// A running node and its control plane. Get the one of a test binary with [`Node::shared`].
pub struct Node {
    cp: ControlPlane,
    children: Mutex<Vec<(&'static str, Child)>>,
    bin: PathBuf,
    _lock: std::fs::File,
}

static SHARED: OnceLock<Result<Node, String>> = OnceLock::new();

extern "C" fn teardown_shared() {
    if let Some(Ok(node)) = SHARED.get() {
        node.teardown();
    }
}

impl Node {
    /// The node of this test binary, started on first use with `options` (later calls get the same node). Panics
    /// when it cannot start: tests that need a node fail, they never skip.
    pub fn shared(options: &NodeOptions) -> &'static Node {
        let started = SHARED.get_or_init(|| {
            let options = options.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            // Started from a thread that never ends: PDEATHSIG fires when the *thread* that forked exits.
            std::thread::Builder::new()
                .name("vd-node".into())
                .spawn(move || {
                    let _ = tx.send(Node::start(&options).map_err(|e| e.to_string()));
                    loop {
                        std::thread::park();
                    }
                })
                .expect("spawn the node thread");
            let node = rx.recv().unwrap_or_else(|_| Err("the node thread died".into()));
            if node.is_ok() {
                // SAFETY: registering a plain extern "C" function. Registered after the control plane's hook, so it
                // runs before the control plane is killed.
                unsafe { libc::atexit(teardown_shared) };
            }
            node
        });
        match started {
            Ok(node) => node,
            Err(e) => panic!("cannot start the test node: {e}"),
        }
    }

    /// Starts a control plane on [`NODE_IP`] and the node. Call it from a thread that lives as long as the node
    /// (its processes die with that thread); dropping the node tears it down.
    pub fn start(options: &NodeOptions) -> Result<Node, Error> {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            return Err(Error::Node("a node needs root (mounts, network namespaces, iptables, cgroups)".into()));
        }
        let bin = crate::bin_dir();
        for b in [
            "kubelet",
            "kube-proxy",
            "kube-scheduler",
            "containerd",
            "containerd-shim-runc-v2",
            "ctr",
            "runc",
            "crictl",
            "cni/bridge",
            "cni/host-local",
            "cni/loopback",
        ] {
            if !bin.join(b).exists() {
                return Err(Error::Node(format!(
                    "{} is missing; build the node with `bash tests/node/build.sh`",
                    bin.join(b).display()
                )));
            }
        }
        for tool in ["ip", "iptables-save", "iptables-restore", "mount", "gcc"] {
            let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output();
            if !found.map_err(io("run sh"))?.status.success() {
                return Err(Error::Node(format!("`{tool}` is missing; run `bash scripts/setup.sh`")));
            }
        }
        let lock = lock()?;
        // A run that was killed left its node behind: clean it first.
        cleanup(&bin);
        let dir = Path::new(DIR);
        for sub in ["etc", "cni/net.d", "cni/bin", "cni/ipam", "containerd", "kubelet/pki", "pod-logs", "cdi", "logs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io(format!("create {DIR}/{sub}")))?;
        }
        record_host_state(dir)?;
        run(Command::new("ip").args(["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]))?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(io("enable ip_forward"))?;
        if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            // kube-proxy's rules must see traffic between pods on the bridge (a pod reaching a Service whose
            // endpoint sits on the same bridge).
            std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1").map_err(io("bridge-nf-call"))?;
        }
        for plugin in ["bridge", "host-local", "loopback"] {
            std::fs::copy(bin.join("cni").join(plugin), dir.join("cni/bin").join(plugin))
                .map_err(io(format!("copy the CNI plugin {plugin}")))?;
        }
        write_configs(dir, options)?;

        let cp =
            match ControlPlane::start(&ControlPlaneOptions { address: NODE_IP.into(), node: Some(NODE_NAME.into()) }) {
                Ok(cp) => cp,
                Err(e) => {
                    cleanup(&bin);
                    return Err(e);
                }
            };
        let node = Node { cp, children: Mutex::new(Vec::new()), bin, _lock: lock };
        if let Err(e) = node.start_components(dir) {
            let logs = node.log_tails();
            node.teardown();
            return Err(Error::Node(format!("{e}\n{logs}")));
        }
        Ok(node)
    }

    fn start_components(&self, dir: &Path) -> Result<(), Error> {
        let bin = &self.bin;
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let mut containerd = Command::new(bin.join("containerd"));
        containerd.arg(format!("--config={}", dir.join("etc/containerd.toml").display())).env("PATH", &path);
        self.spawn("containerd", containerd)?;
        let socket = dir.join("containerd.sock");
        wait_for("containerd's socket", Duration::from_secs(30), || socket.exists())?;
        run(Command::new(bin.join("ctr")).args(["--address", &socket.to_string_lossy(), "version"]))?;
        self.import_images(&["pause"], None)?;

        let admin = self.cp.kubeconfig().to_path_buf();
        let scheduler_args = [
            format!("--kubeconfig={}", admin.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
        ];
        let mut scheduler = Command::new(bin.join("kube-scheduler"));
        scheduler.args(scheduler_args);
        self.spawn("kube-scheduler", scheduler)?;

        let kubelet_kubeconfig = self.cp.kubeconfig_with_token("kubeconfig-kubelet", NODE_TOKEN)?;
        let mut kubelet = Command::new(bin.join("kubelet"));
        kubelet
            .arg(format!("--config={}", dir.join("etc/kubelet.yaml").display()))
            .arg(format!("--kubeconfig={}", kubelet_kubeconfig.display()))
            .arg(format!("--root-dir={}", dir.join("kubelet").display()))
            .arg(format!("--cert-dir={}", dir.join("kubelet/pki").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={NODE_IP}"))
            .env("PATH", &path);
        self.spawn("kubelet", kubelet)?;

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(io("runtime"))?;
        rt.block_on(async {
            let nodes: Api<KubeNode> = Api::all(self.cp.client().await?);
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let ready = nodes
                    .get_opt(NODE_NAME)
                    .await?
                    .and_then(|n| n.status?.conditions)
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if ready {
                    return Ok::<(), Error>(());
                }
                if Instant::now() > deadline {
                    return Err(Error::NotReady("the node", "kubelet did not report Ready within 90s".into()));
                }
                self.check_alive()?;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })?;

        let proxy_kubeconfig = self.cp.kubeconfig_with_token("kubeconfig-proxy", PROXY_TOKEN)?;
        let healthz = crate::free_port()?;
        let mut proxy = Command::new(bin.join("kube-proxy"));
        proxy
            .arg(format!("--kubeconfig={}", proxy_kubeconfig.display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg("--proxy-mode=iptables")
            .arg(format!("--cluster-cidr={POD_SUBNET}"))
            .arg(format!("--healthz-bind-address=127.0.0.1:{healthz}"))
            .arg(format!("--metrics-bind-address=127.0.0.1:{}", crate::free_port()?))
            // Leave the host's conntrack settings alone.
            .arg("--conntrack-max-per-core=0")
            .arg("--conntrack-tcp-timeout-established=0")
            .arg("--conntrack-tcp-timeout-close-wait=0");
        self.spawn("kube-proxy", proxy)?;
        wait_for("kube-proxy's first sync", Duration::from_secs(60), || {
            http_ok(&format!("127.0.0.1:{healthz}"), "/healthz")
        })?;
        Ok(())
    }

    fn spawn(&self, name: &'static str, mut cmd: Command) -> Result<(), Error> {
        let log = Path::new(DIR).join("logs").join(format!("{name}.log"));
        let out = std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
        let err = out.try_clone().map_err(io("clone a log handle"))?;
        // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the child when this thread ends.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().map_err(io(format!("start {name}")))?;
        self.children.lock().unwrap_or_else(|p| p.into_inner()).push((name, child));
        Ok(())
    }

    fn check_alive(&self) -> Result<(), Error> {
        for (name, child) in self.children.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Node(format!("{name} exited ({status})")));
            }
        }
        Ok(())
    }

    /// The last lines of each component's log, to explain a failure.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for name in ["containerd", "kubelet", "kube-proxy", "kube-scheduler"] {
            let text =
                std::fs::read_to_string(Path::new(DIR).join("logs").join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name} (last 15 lines)\n"));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The control plane this node registered with (bound to [`NODE_IP`]).
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// The node's containerd socket.
    pub fn containerd_socket(&self) -> PathBuf {
        Path::new(DIR).join("containerd.sock")
    }

    /// Builds `images` (of agent, operator, pause) with `scripts/images.sh` from the binaries in `bin_dir` (for
    /// agent and operator) and imports them into the node's containerd. Returns `name archive` lines.
    pub fn import_images(&self, images: &[&str], bin_dir: Option<&Path>) -> Result<String, Error> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut cmd = Command::new("bash");
        cmd.arg(root.join("scripts/images.sh"))
            .args(["--images", &images.join(" ")])
            .arg("--out")
            .arg(Path::new(DIR).join("images"))
            .arg("--import")
            .arg(self.containerd_socket())
            .env("VD_CTR", self.bin.join("ctr"));
        if let Some(b) = bin_dir {
            cmd.arg("--bin-dir").arg(b);
        }
        run(&mut cmd)
    }

    /// `crictl` against the node's containerd, for what only the runtime knows (a container's host PID).
    pub fn crictl(&self, args: &[&str]) -> Result<String, Error> {
        run(Command::new(self.bin.join("crictl"))
            .arg(format!("--runtime-endpoint=unix://{}", self.containerd_socket().display()))
            .args(args))
    }

    /// A fresh namespace (see [`ControlPlane::namespace`]) whose `default` ServiceAccount exists, so pods can be
    /// created in it at once.
    pub async fn namespace(&self, hint: &str) -> Result<String, Error> {
        let ns = self.cp.namespace(hint).await?;
        let sas: Api<ServiceAccount> = Api::namespaced(self.cp.client().await?, &ns);
        let deadline = Instant::now() + Duration::from_secs(30);
        while sas.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                return Err(Error::NotReady("the default ServiceAccount", format!("{ns}: not within 30s")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(ns)
    }

    /// Stops the node and removes every trace of it from the host (safe to call twice).
    pub fn teardown(&self) {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        // The kubelet first, so it does not restart what is being removed; then every pod sandbox through the
        // runtime, which runs CNI DEL for each (veth, IP allocation, bridge FDB).
        for name in ["kube-scheduler", "kubelet"] {
            stop(&mut children, name);
        }
        if children.iter().any(|(n, _)| *n == "containerd") {
            let _ = self.crictl(&["rmp", "-fa"]);
        }
        stop(&mut children, "kube-proxy");
        stop(&mut children, "containerd");
        children.clear();
        cleanup(&self.bin);
        // Still held: nobody else can have started a node in between.
        let _ = std::fs::remove_file(LOCK);
    }
}

/// Takes the machine's node lock, or says who holds it.
fn lock() -> Result<std::fs::File, Error> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .map_err(io(format!("open {LOCK}")))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::Node(format!(
            "another node runs on this machine ({LOCK} is locked): a test binary, or `bash scripts/dev-cluster.sh up` \
             (stop it with `bash scripts/dev-cluster.sh down`)"
        )));
    }
    Ok(lock)
}

/// Removes what a node that was killed left on this host; nothing to do when none was. Fails while a node runs.
pub fn clean_host() -> Result<(), Error> {
    let _lock = lock()?;
    cleanup(&crate::bin_dir());
    let _ = std::fs::remove_file(LOCK);
    Ok(())
}

impl Drop for Node {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn stop(children: &mut [(&'static str, Child)], name: &str) {
    for (n, child) in children.iter_mut() {
        if *n != name {
            continue;
        }
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Removes whatever a node left on this host, whether it stopped cleanly or was killed. Every step is idempotent
/// and tolerates what is already gone.
fn cleanup(bin: &Path) {
    let dir = Path::new(DIR);
    // Processes: anything still running from the node's binaries (shims outlive a killed containerd) and every
    // process in the pods' cgroups.
    kill_node_processes(bin);
    // kube-proxy's own cleanup of its iptables (and nftables) rules.
    let _ = Command::new(bin.join("kube-proxy")).arg("--cleanup").stdout(Stdio::null()).stderr(Stdio::null()).status();
    // Mounts under the node directory, deepest first: kubelet's bind mount of its root, Secret and projected
    // tmpfs volumes, overlay root filesystems, network namespace files.
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mount))
        .filter(|m| m == DIR || m.starts_with(&format!("{DIR}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &mounts {
        // SAFETY: umount2 on a path string we own; MNT_DETACH never blocks.
        let c = std::ffi::CString::new(m.as_str()).unwrap_or_default();
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).stderr(Stdio::null()).status();
    let _ =
        Command::new("ip").args(["addr", "del", &format!("{NODE_IP}/32"), "dev", "lo"]).stderr(Stdio::null()).status();
    remove_chains();
    restore_host_state(dir);
    remove_cgroups();
    if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{CNI_NETWORK}-")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

fn kill_node_processes(bin: &Path) {
    for round in 0..20 {
        let mut pids = Vec::new();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
                let exe = std::fs::read_link(p.path().join("exe")).unwrap_or_default();
                let in_pod = std::fs::read_to_string(p.path().join("cgroup"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.contains("/kubepods"));
                let ours = NODE_PROGRAMS.iter().any(|p| exe == bin.join(p));
                if ours || in_pod {
                    pids.push(pid);
                }
            }
        }
        if pids.is_empty() {
            return;
        }
        let signal = if round == 0 { libc::SIGTERM } else { libc::SIGKILL };
        for pid in pids {
            // SAFETY: a plain signal to a process of the node (one of its binaries, or inside a pod's cgroup).
            unsafe { libc::kill(pid, signal) };
        }
        std::thread::sleep(Duration::from_millis(if round == 0 { 1000 } else { 200 }));
    }
}

/// Deletes every rule that jumps to, and every chain named, KUBE-* or CNI-*, in both iptables back ends.
fn remove_chains() {
    for (save, restore) in [("iptables-save", "iptables-restore"), ("iptables-legacy-save", "iptables-legacy-restore")]
    {
        let Ok(out) = Command::new(save).stderr(Stdio::null()).output() else { continue };
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains("KUBE-") && !text.contains("CNI-") {
            continue;
        }
        let kept: String =
            text.lines().filter(|l| !(l.contains("KUBE-") || l.contains("CNI-"))).map(|l| format!("{l}\n")).collect();
        if let Ok(mut child) = Command::new(restore).stdin(Stdio::piped()).stderr(Stdio::null()).spawn() {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(kept.as_bytes());
            }
            let _ = child.wait();
        }
    }
}

/// Saves what teardown must put back: the sysctls, the nftables tables and which host paths existed.
fn record_host_state(dir: &Path) -> Result<(), Error> {
    let mut state = String::new();
    for s in SYSCTLS {
        if let Ok(v) = std::fs::read_to_string(Path::new("/proc/sys").join(s)) {
            state.push_str(&format!("sysctl {s} {}\n", v.trim()));
        }
    }
    for t in nft_tables() {
        state.push_str(&format!("nft {t}\n"));
    }
    for p in HOST_PATHS {
        if Path::new(p).exists() {
            state.push_str(&format!("path {p}\n"));
        }
    }
    state.push_str("complete\n");
    std::fs::write(dir.join("host-state"), state).map_err(io("write the host state"))
}

fn restore_host_state(dir: &Path) {
    let Ok(state) = std::fs::read_to_string(dir.join("host-state")) else { return };
    if !state.ends_with("complete\n") {
        return;
    }
    let mut tables = Vec::new();
    let mut paths = Vec::new();
    for line in state.lines() {
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("sysctl"), Some(key), Some(value)) => {
                let _ = std::fs::write(Path::new("/proc/sys").join(key), value);
            }
            (Some("nft"), Some(family), Some(name)) => tables.push(format!("{family} {name}")),
            (Some("path"), Some(p), _) => paths.push(p.to_string()),
            _ => {}
        }
    }
    for t in nft_tables() {
        if !tables.contains(&t) {
            let mut args = vec!["delete", "table"];
            args.extend(t.split(' '));
            let _ = Command::new("nft").args(&args).stderr(Stdio::null()).status();
        }
    }
    for p in HOST_PATHS {
        if !paths.iter().any(|q| q == p) {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// `family name` of each nftables table (empty when nft is not installed).
fn nft_tables() -> Vec<String> {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).stderr(Stdio::null()).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_prefix("table ").map(str::to_string)).collect()
}

/// Removes the `kubepods` cgroups kubelet made, depth first, in every hierarchy (v1 controllers and v2).
fn remove_cgroups() {
    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()));
    }
    for root in roots {
        for name in ["kubepods", "kubepods.slice"] {
            let p = root.join(name);
            if p.is_dir() {
                remove(&p);
            }
        }
    }
}

fn write_configs(dir: &Path, options: &NodeOptions) -> Result<(), Error> {
    let d = dir.display();
    let containerd = format!(
        r#"version = 3
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "{d}/containerd/s"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{SANDBOX_IMAGE}"
[plugins."io.containerd.cri.v1.runtime"]
  cdi_spec_dirs = ["{d}/cdi"]
  netns_mounts_under_state_dir = true
  # runc cannot lower oom_score_adj without CAP_SYS_RESOURCE, which this kind of machine lacks.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{d}/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{d}/cni/bin"]
    conf_dir = "{d}/cni/net.d"
"#,
        runc = crate::bin_dir().join("runc").display()
    );
    let cni = format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "{CNI_NETWORK}",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "dataDir": "{d}/cni/ipam",
        "ranges": [[{{"subnet": "{POD_SUBNET}", "gateway": "{POD_GATEWAY}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}]
      }}
    }},
    {{"type": "loopback"}}
  ]
}}
"#
    );
    let kubelet = format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{d}/containerd.sock
address: {NODE_IP}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}
authorization: {{mode: AlwaysAllow}}
cgroupDriver: cgroupfs
# This kind of machine has cgroup v1; kubelet 1.35 refuses it unless told.
failCgroupV1: false
failSwapOn: false
podLogsDir: {d}/pod-logs
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100
syncFrequency: {sync}s
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
"#,
        port = crate::free_port()?,
        healthz = crate::free_port()?,
        sync = options.sync_frequency.as_secs().max(1),
    );
    for (name, text) in
        [("etc/containerd.toml", containerd), ("cni/net.d/10-vdnet.conflist", cni), ("etc/kubelet.yaml", kubelet)]
    {
        std::fs::write(dir.join(name), text).map_err(io(format!("write {name}")))?;
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd.stdin(Stdio::null()).output().map_err(io(format!("run {:?}", cmd.get_program())))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: format!("{:?}", cmd),
            output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        })
    }
}

/// A plain HTTP/1.1 GET answered with 200.
pub(crate) fn http_ok(addr: &str, path: &str) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}
