//! `vdctl`: keys, signed URLs and rotation from a shell, exactly as backends and the operator do them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use vd_token::rotation::{self, Event, RotationPolicy};
mod status;
mod traffic;

use vd_token::{
    Carrier, IpRange, Keyring, Policy, RequestAuth, SignError, Signer, UrlRequest, Verifier, canonical_path,
};

#[derive(Parser)]
#[command(name = "vdctl", version, about = "Mint, verify and rotate VideoDelivery signed URLs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a fresh keyring with one active key.
    Keygen {
        /// Where to write it (created with mode 0600); standard output if absent.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print a signed URL (or token) for a path, signed with the keyring's active key.
    Sign {
        #[arg(long, env = "VD_KEYRING")]
        keyring: PathBuf,
        /// The object's path as the agent serves it, decoded: /videos/café.mp4
        #[arg(long)]
        path: String,
        /// How long the URL stays valid: 90s, 15m, 1h, 1d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Valid from this long after now (a not-before claim); absent: valid at once.
        #[arg(long, value_parser = humantime::parse_duration)]
        not_before_in: Option<Duration>,
        /// Scope the token to a folder instead of one object; without a value, the folder of --path.
        #[arg(long, num_args = 0..=1, default_missing_value = "")]
        prefix: Option<String>,
        /// Bind the token to a client address or CIDR range.
        #[arg(long)]
        ip: Option<String>,
        /// Scheme and host of the agent or CDN.
        #[arg(long, env = "VD_BASE_URL", default_value = "http://127.0.0.1:8080")]
        base_url: String,
        /// query: ?expires=…&kid=…&signature=…; token: ?token=v1.…; path: {route-prefix}/t/v1.…/… (HLS and DASH:
        /// relative segment URIs inherit it; needs --prefix).
        #[arg(long, value_enum, default_value = "query")]
        carrier: CarrierArg,
        /// The agent's route prefix, where the path carrier goes.
        #[arg(long, env = "VD_ROUTE_PREFIX", default_value = "/videos")]
        route_prefix: String,
        /// Print only the compact token (for a Bearer header or a cookie).
        #[arg(long)]
        token_only: bool,
    },
    /// Check a signed URL as an agent would, and print the verdict. Exit code 1 when refused.
    Verify {
        #[arg(long, env = "VD_KEYRING")]
        keyring: PathBuf,
        /// The URL, or its path and query.
        url: String,
        /// A compact token sent as a Bearer header instead of in the URL.
        #[arg(long)]
        bearer: Option<String>,
        /// The client address the agent would see.
        #[arg(long)]
        client_ip: Option<std::net::IpAddr>,
        /// The agent's route prefix, where a path carrier would be.
        #[arg(long, env = "VD_ROUTE_PREFIX", default_value = "/videos")]
        route_prefix: String,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        max_lifetime: Duration,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        clock_skew: Duration,
        /// Verify at this Unix time instead of now.
        #[arg(long)]
        now: Option<u64>,
    },
    /// Ask the operator to rotate a VideoDelivery's signing key now (sets the videodelivery.dev/rotate
    /// annotation; the operator publishes a new key, then promotes it after the propagation delay).
    ///
    /// Idempotent: while a key is already pending, another request is served by that key (no second key; a
    /// RotationRequested event names it). Ask again after the promotion for another rotation.
    RequestRotation {
        /// The VideoDelivery's name.
        name: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Show a VideoDelivery as its users see it: keys and their states, agents ready of desired, and live traffic
    /// (bytes/s, cache hit ratio, refusals by reason) from two scrapes of every agent's /metrics through the API
    /// server's pod proxy. No Prometheus needed; needs get on pods/proxy in the namespace.
    Status {
        /// The VideoDelivery's name.
        name: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Time between the two scrapes the rates are computed over.
        #[arg(long, default_value = "5s", value_parser = parse_interval)]
        interval: Duration,
        /// Keys and agents only: do not scrape the agents.
        #[arg(long)]
        no_traffic: bool,
    },
    /// Run one rotation step on a keyring file, as the operator does on its Secret.
    Rotate {
        #[arg(long, env = "VD_KEYRING")]
        keyring: PathBuf,
        /// Publish a new pending key now instead of waiting for the interval.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        interval: Duration,
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        propagation_delay: Duration,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        max_lifetime: Duration,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        clock_skew: Duration,
        /// Rotate as of this Unix time instead of now.
        #[arg(long)]
        now: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CarrierArg {
    Query,
    Token,
    Path,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vdctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Keygen { out, force } => keygen(out.as_deref(), force),
        Command::Sign {
            keyring,
            path,
            ttl,
            not_before_in,
            prefix,
            ip,
            base_url,
            carrier,
            route_prefix,
            token_only,
        } => {
            let ring = read_keyring(&keyring)?;
            let now = unix_now()?;
            let prefix = match prefix.as_deref() {
                Some("") => Some(parent_folder(&path)?),
                other => other.map(str::to_owned),
            };
            let ip = ip.map(|ip| IpRange::parse_lenient(&ip).with_context(|| format!("--ip {ip:?}"))).transpose()?;
            let req = UrlRequest {
                base_url: &base_url,
                path: &path,
                exp: now + ttl.as_secs(),
                nbf: not_before_in.map(|d| now + d.as_secs()),
                prefix: prefix.as_deref(),
                ip,
                carrier: match carrier {
                    CarrierArg::Query => Carrier::Query,
                    CarrierArg::Token | CarrierArg::Path => Carrier::Token,
                },
            };
            let signer = Signer::new(&ring).map_err(|e| starting_hint(e, now))?;
            let out = match carrier {
                _ if token_only => signer.token(&signer.claims(&req)?),
                CarrierArg::Path => signer.path_url(&req, &route_prefix)?,
                CarrierArg::Query | CarrierArg::Token => signer.url(&req)?,
            };
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { keyring, url, bearer, client_ip, route_prefix, max_lifetime, clock_skew, now } => {
            let ring = read_keyring(&keyring)?;
            let policy = Policy { max_lifetime: max_lifetime.as_secs(), clock_skew: clock_skew.as_secs() };
            let (raw_path, query) = split_url(&url)?;
            let carried = vd_token::split_path_carrier(raw_path, &route_prefix);
            let raw_path = carried.as_ref().map_or(raw_path, |c| c.path.as_str());
            let path = canonical_path(raw_path).map_err(|e| anyhow!("the URL's path is invalid: {e}"))?;
            let authorization = bearer.map(|t| format!("Bearer {t}"));
            let req = RequestAuth {
                path: &path,
                query,
                authorization: authorization.as_deref(),
                cookies: &[],
                client_ip,
                path_token: carried.as_ref().map(|c| c.token),
            };
            let now = now.map_or_else(unix_now, Ok)?;
            match Verifier::new(&ring, policy).verify(&req, now) {
                Ok(grant) => {
                    let scope = if grant.prefix { "prefix" } else { "path" };
                    println!("valid: key {}, {scope} scope, expires in {}s", grant.kid, grant.exp.saturating_sub(now));
                    Ok(ExitCode::SUCCESS)
                }
                Err(reason) => {
                    println!("refused: {} ({reason})", reason.code());
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::RequestRotation { name, namespace } => request_rotation(&name, namespace.as_deref()),
        Command::Status { name, namespace, interval, no_traffic } => {
            status::run(&name, namespace.as_deref(), (!no_traffic).then_some(interval))
        }
        Command::Rotate { keyring, force, interval, propagation_delay, max_lifetime, clock_skew, now } => {
            let ring = read_keyring(&keyring)?;
            let policy = RotationPolicy {
                rotation_interval: interval.as_secs(),
                propagation_delay: propagation_delay.as_secs(),
                max_lifetime: max_lifetime.as_secs(),
                clock_skew: clock_skew.as_secs(),
            };
            let now = now.map_or_else(unix_now, Ok)?;
            let r = rotation::rotate(Some(&ring), now, &policy, force, &mut rotation::os_random)?;
            for e in &r.events {
                println!("{}", describe(e));
            }
            if r.changed() {
                write_secret_file(&keyring, &r.keyring.to_json(), true)?;
            } else {
                println!("nothing to do");
            }
            println!("next step due at {} (in {}s)", r.next_deadline, r.next_deadline.saturating_sub(now));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Sets the rotation annotation to the current time; a new value is a new request, so asking twice rotates twice.
fn request_rotation(name: &str, namespace: Option<&str>) -> Result<ExitCode> {
    use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = kube::Client::try_default().await.context("no Kubernetes configuration (KUBECONFIG) found")?;
        let ns = namespace.map(str::to_owned).unwrap_or_else(|| client.default_namespace().to_owned());
        let gvk = GroupVersionKind::gvk("videodelivery.dev", "v1alpha1", "VideoDelivery");
        let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &ApiResource::from_gvk(&gvk));
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let patch = serde_json::json!({"metadata": {"annotations": {"videodelivery.dev/rotate": stamp}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("could not annotate VideoDelivery {ns}/{name}"))?;
        println!(
            "rotation requested for {ns}/{name} ({stamp}); a key already pending serves it. Watch it with \
             `kubectl get vd {name} -n {ns} -w`"
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn keygen(out: Option<&Path>, force: bool) -> Result<ExitCode> {
    let ring = rotation::generate(unix_now()?, &mut rotation::os_random)?;
    match out {
        Some(path) => {
            write_secret_file(path, &ring.to_json(), force)?;
            let kid = ring.active().map_or("none", |k| k.kid());
            eprintln!("wrote {} with active key {kid}", path.display());
        }
        None => std::io::stdout().write_all(ring.to_json().as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(e: &Event) -> String {
    match e {
        Event::Created { kid } => format!("created active key {kid}"),
        Event::Published { kid, activate_after } => {
            format!("published pending key {kid}, active from {activate_after}")
        }
        Event::Promoted { kid, retired: Some(retired), accept_until } => {
            format!("promoted {kid} to active; {retired} is retiring, accepted until {accept_until}")
        }
        Event::Promoted { kid, retired: None, .. } => format!("promoted {kid} to active; no key was active before"),
        Event::Removed { kid } => format!("removed retired key {kid}"),
    }
}

/// Adds the wall-clock time and the wait to a starting keyring's refusal, so an operator knows when to retry.
fn starting_hint(e: SignError, now: u64) -> anyhow::Error {
    match &e {
        SignError::NotYetActive { activate_after, .. } => {
            let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(*activate_after));
            anyhow!("{e} ({at}, in {}s)", activate_after.saturating_sub(now))
        }
        _ => e.into(),
    }
}

fn read_keyring(path: &Path) -> Result<Keyring> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read keyring {}", path.display()))?;
    Keyring::from_json(&bytes).with_context(|| format!("keyring {} is invalid", path.display()))
}

/// Writes key material the way a Secret should be kept: mode 0600, replaced atomically.
fn write_secret_file(path: &Path, text: &str, replace: bool) -> Result<()> {
    if !replace && path.exists() {
        bail!("{} already exists (pass --force to replace it)", path.display());
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("keyring")));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// `/videos/abc/master.m3u8` -> `/videos/abc/`.
fn parent_folder(path: &str) -> Result<String> {
    match path.rfind('/') {
        Some(i) => Ok(path[..=i].to_owned()),
        None => bail!("--path must start with '/'"),
    }
}

/// The raw path and query of a URL, or of a bare `/path?query`.
fn split_url(url: &str) -> Result<(&str, Option<&str>)> {
    let rest = match url.find("://") {
        Some(i) => {
            let after = &url[i + 3..];
            after.find(['/', '?']).map(|j| &after[j..]).unwrap_or("/")
        }
        None if url.starts_with('/') => url,
        None => bail!("{url:?} is neither a URL nor a path starting with '/'"),
    };
    let rest = rest.split('#').next().unwrap_or(rest);
    Ok(match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    })
}

/// A scrape interval between 1 s and 10 min: rates over less are noise, and longer is what Prometheus is for.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&d) {
        return Err("must be between 1s and 10m".into());
    }
    Ok(d)
}

fn unix_now() -> Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH).context("the system clock is before 1970")?.as_secs())
}
