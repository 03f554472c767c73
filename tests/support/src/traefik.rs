//! Traefik, a real gateway: its Gateway API and Ingress providers watch the test cluster and route viewers over
//! HTTPS to the agents' pods. Built from Go modules by `tests/traefik/build.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Error, Process, free_port, io, wait_for};

/// The pinned version (must match tests/traefik/go.mod).
pub const TRAEFIK_VERSION: &str = "v3.6.12";

/// A running Traefik. Killed when dropped (and by the kernel if the thread that started it dies).
pub struct Traefik {
    process: Process,
    address: String,
    https_port: u16,
}

impl Traefik {
    /// What a GatewayClass names to be served by this Traefik.
    pub const GATEWAY_CONTROLLER: &'static str = "traefik.io/gateway-controller";
    /// What an IngressClass names to be served by this Traefik.
    pub const INGRESS_CONTROLLER: &'static str = "traefik.io/ingress-controller";

    /// The binary: `VD_TRAEFIK`, or where `tests/traefik/build.sh` puts it.
    pub fn binary() -> Result<PathBuf, Error> {
        let bin = std::env::var_os("VD_TRAEFIK").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
            home.join(format!(".cache/videodelivery/traefik/{TRAEFIK_VERSION}/traefik"))
        });
        if bin.exists() { Ok(bin) } else { Err(Error::MissingTraefik(bin)) }
    }

    /// Starts Traefik against the cluster of `kubeconfig` with the kubernetesGateway and kubernetesIngress
    /// providers and one HTTPS entrypoint on a free port of `address` (a Gateway's HTTPS listener must name that
    /// port: Traefik attaches listeners to the entrypoint with the same port). It publishes `address` in the status
    /// of the Gateways and Ingresses it serves. The log goes to `log`. Waits until it answers its ping.
    pub fn start(kubeconfig: &Path, address: &str, log: PathBuf) -> Result<Traefik, Error> {
        let https_port = free_port()?;
        let args = [
            format!("--entryPoints.websecure.address={address}:{https_port}"),
            // Every router on this entrypoint terminates TLS: an Ingress's spec.tls only supplies certificates to
            // Traefik, its router stays plain HTTP (and answers 404 to HTTPS) unless the entrypoint says so.
            "--entryPoints.websecure.http.tls=true".into(),
            "--providers.kubernetesGateway=true".into(),
            format!("--providers.kubernetesGateway.statusAddress.ip={address}"),
            "--providers.kubernetesIngress=true".into(),
            format!("--providers.kubernetesIngress.ingressEndpoint.ip={address}"),
        ];
        Self::launch(kubeconfig, address, https_port, &args, log)
    }

    /// Starts Traefik with only the kubernetesIngress provider, limited to the Ingresses of `class` in
    /// `namespace`, and one plain-HTTP entrypoint on a free port of 127.0.0.1 (a browser's page there is a secure
    /// context without a certificate). It leaves every other Gateway and Ingress of the cluster alone.
    pub fn start_http_ingress(kubeconfig: &Path, namespace: &str, class: &str, log: PathBuf) -> Result<Traefik, Error> {
        let port = free_port()?;
        let args = [
            format!("--entryPoints.web.address=127.0.0.1:{port}"),
            "--providers.kubernetesIngress=true".into(),
            format!("--providers.kubernetesIngress.namespaces={namespace}"),
            format!("--providers.kubernetesIngress.ingressClass={class}"),
            "--providers.kubernetesIngress.ingressEndpoint.ip=127.0.0.1".into(),
        ];
        Self::launch(kubeconfig, "127.0.0.1", port, &args, log)
    }

    fn launch(kubeconfig: &Path, address: &str, port: u16, args: &[String], log: PathBuf) -> Result<Traefik, Error> {
        let bin = Self::binary()?;
        let ping_port = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", kubeconfig)
            // Outside a pod: never take the in-cluster configuration.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .args(args)
            .arg(format!("--entryPoints.traefik.address=127.0.0.1:{ping_port}"))
            .arg("--ping=true")
            .arg("--ping.entryPoint=traefik")
            .arg("--global.checkNewVersion=false")
            .arg("--global.sendAnonymousUsage=false")
            .arg("--log.level=INFO")
            .arg("--log.noColor=true")
            .arg("--accessLog=true");
        let mut process = Process::spawn(cmd, log)?;
        let pinged = wait_for("traefik", Duration::from_secs(30), || {
            matches!(process.try_wait(), Ok(None)) && crate::node::http_ok(&format!("127.0.0.1:{ping_port}"), "/ping")
        });
        if let Err(e) = pinged {
            let log = process.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            return Err(Error::NotReady("traefik", format!("{e}\n--- traefik (last 20 lines)\n{tail}")));
        }
        Ok(Traefik { process, address: address.into(), https_port: port })
    }

    /// The port of the entrypoint: HTTPS (what a Gateway listener's `port` must be), or plain HTTP for
    /// [`Traefik::start_http_ingress`].
    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// `address:port` of the HTTPS entrypoint.
    pub fn https_address(&self) -> String {
        format!("{}:{}", self.address, self.https_port)
    }

    /// What Traefik logged so far (its access log included), to explain a failure.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// A test certificate authority made with the `openssl` CLI, and server certificates it signs.
pub struct TestCa {
    dir: tempfile::TempDir,
    serial: std::sync::atomic::AtomicU32,
}

/// A key and the certificate for it, PEM.
pub struct Leaf {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), Error> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().map_err(io("run openssl"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("openssl {args:?}"),
            output: String::from_utf8_lossy(&out.stderr).into(),
        })
    }
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

impl TestCa {
    /// A fresh CA (P-256, valid 3 days) whose certificate is [`TestCa::ca_file`].
    pub fn new() -> Result<TestCa, Error> {
        let dir = tempfile::Builder::new().prefix("vd-test-ca-").tempdir().map_err(io("temp dir"))?;
        let mut args = vec!["req", "-x509"];
        args.extend(EC);
        args.extend(["-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "3"]);
        args.extend(["-subj", "/CN=VideoDelivery test CA", "-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(dir.path(), &args)?;
        Ok(TestCa { dir, serial: std::sync::atomic::AtomicU32::new(0x1000) })
    }

    /// The CA certificate (PEM), for clients to trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for `hosts` (DNS names), valid 2 days.
    pub fn issue(&self, hosts: &[&str]) -> Result<Leaf, Error> {
        let n = self.serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = self.dir.path();
        let (key, csr, crt, ext) = (format!("{n}.key"), format!("{n}.csr"), format!("{n}.crt"), format!("{n}.ext"));
        let san: Vec<String> = hosts.iter().map(|h| format!("DNS:{h}")).collect();
        std::fs::write(
            d.join(&ext),
            format!(
                "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n\
                 keyUsage=critical,digitalSignature\n",
                san.join(",")
            ),
        )
        .map_err(io("write the certificate extensions"))?;
        let subj = format!("/CN={}", hosts.first().copied().unwrap_or("server"));
        let mut args = vec!["req", "-new"];
        args.extend(EC);
        args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(d, &args)?;
        let serial = format!("{n:#x}");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        )?;
        let read = |f: &str| std::fs::read(d.join(f)).map_err(io(format!("read {f}")));
        Ok(Leaf { cert: read(&crt)?, key: read(&key)? })
    }
}
