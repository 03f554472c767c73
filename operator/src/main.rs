//! `videodelivery-operator`: flags, logging, leader election, then the controller until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use tokio::sync::watch;
use tracing::{error, info, warn};
use vd_token::duration::GoDuration;
use videodelivery_operator::admin::{self, Health};
use videodelivery_operator::controller::{self, Context};
use videodelivery_operator::crd::SigningFloors;
use videodelivery_operator::leader::{LeaderElector, Leadership};
use videodelivery_operator::metrics::Metrics;
use videodelivery_operator::webhook;

#[derive(Parser, Debug)]
#[command(
    name = "videodelivery-operator",
    version,
    about = "Reconciles VideoDelivery resources",
    args_override_self = true
)]
struct Args {
    /// Image of the agents when a VideoDelivery does not name one.
    #[arg(long, env = "VD_AGENT_IMAGE", default_value = concat!("ghcr.io/videodelivery/agent:", env!("CARGO_PKG_VERSION")))]
    agent_image: String,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "VD_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    admin_listen: SocketAddr,
    /// Watch one namespace only (the default is every namespace).
    #[arg(long, env = "VD_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Take a Lease before reconciling, so several replicas can run and one works.
    #[arg(long, env = "VD_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, env = "VD_LEASE_NAME", default_value = "videodelivery-operator")]
    lease_name: String,
    /// How long a Lease lasts without renewal (at least 3s); the holder renews every third of it.
    #[arg(long, env = "VD_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// This replica's name in the Lease and in events (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Shortest signing.propagationDelay accepted: above kubelet's Secret propagation. Lower only for tests, and
    /// install the CRD with the same floor (the chart's signingFloors does both).
    #[arg(long, env = "VD_MIN_PROPAGATION_DELAY", default_value = "2m", value_parser = vd_token::duration::parse)]
    min_propagation_delay: GoDuration,
    /// Shortest signing.maxTokenLifetime accepted.
    #[arg(long, env = "VD_MIN_TOKEN_LIFETIME", default_value = "1m", value_parser = vd_token::duration::parse)]
    min_token_lifetime: GoDuration,
    /// Shortest signing.rotationInterval accepted.
    #[arg(long, env = "VD_MIN_ROTATION_INTERVAL", default_value = "1h", value_parser = vd_token::duration::parse)]
    min_rotation_interval: GoDuration,
    /// Sidecar mode: serve the mutating admission webhook (`/mutate-pods`, HTTPS) on this address. Every replica
    /// serves it, leader or not.
    #[arg(long, env = "VD_WEBHOOK_LISTEN")]
    webhook_listen: Option<SocketAddr>,
    /// Secret in the operator's namespace (POD_NAMESPACE) holding the webhook's CA and serving certificate.
    #[arg(long, env = "VD_WEBHOOK_SECRET", default_value = "videodelivery-webhook-tls")]
    webhook_secret: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator writes.
    #[arg(long, env = "VD_WEBHOOK_CONFIGURATION", default_value = "videodelivery-sidecar-injector")]
    webhook_configuration: String,
    /// Names the webhook's certificate covers (the Service's DNS names); comma-separated or repeated.
    #[arg(long, env = "VD_WEBHOOK_HOSTS", value_delimiter = ',')]
    webhook_host: Vec<String>,
    #[arg(long, env = "VD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    // The workspace compiles both rustls providers; pick one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    info!(admin = %listener.local_addr()?, "admin endpoints up");
    tokio::spawn(admin::serve(listener, metrics.clone(), health.clone()));

    let client = kube::Client::try_default().await.context("no Kubernetes client configuration found")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    if !reach_api_server(&client, stop_rx.clone()).await {
        return Ok(());
    }
    health.ready.store(true, Ordering::Relaxed);

    if let Some(addr) = args.webhook_listen {
        anyhow::ensure!(
            !args.webhook_host.is_empty(),
            "--webhook-listen needs --webhook-host (the Service's DNS name)"
        );
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        info!(webhook = %listener.local_addr()?, "admission webhook starting");
        let settings = webhook::WebhookSettings {
            namespace: args.lease_namespace.clone(),
            secret_name: args.webhook_secret.clone(),
            configuration: args.webhook_configuration.clone(),
            hosts: args.webhook_host.clone(),
            default_image: args.agent_image.clone(),
        };
        tokio::spawn(webhook::run(client.clone(), settings, listener, stop_rx.clone()));
    }

    let elector = args
        .leader_elect
        .then(|| {
            LeaderElector::new(client.clone(), &args.lease_namespace, &args.lease_name, &identity, args.lease_duration)
        })
        .transpose()
        .context("--lease-duration")?;
    let lost = match &elector {
        Some(e) => match lead(e, stop_rx.clone()).await {
            Some(lost) => Some(lost),
            None => return Ok(()),
        },
        None => None,
    };
    metrics.leader.set(1);

    let floors = SigningFloors {
        propagation_delay: args.min_propagation_delay,
        token_lifetime: args.min_token_lifetime,
        rotation_interval: args.min_rotation_interval,
    };
    let mut ctx = Context::new(client, metrics.clone(), args.agent_image.clone(), floors, &identity);
    ctx.sidecar_mode = args.webhook_listen.is_some();
    let ctx = Arc::new(ctx);
    info!(namespace = args.namespace.as_deref().unwrap_or("(all)"), "reconciling VideoDeliveries");
    let mut stop = stop_rx.clone();
    let lost_flag = lost.clone();
    let shutdown = async move {
        let lost = async {
            match lost_flag {
                Some(mut l) => {
                    let _ = l.wait_for(|v| *v).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.wait_for(|v| *v) => {}
            () = lost => {}
        }
    };
    controller::run(ctx, args.namespace.as_deref(), shutdown).await;
    metrics.leader.set(0);

    if lost.is_some_and(|l| *l.borrow()) {
        // Like client-go: a replica that lost its lease exits, and comes back as a standby.
        error!("lost the leader Lease; exiting");
        std::process::exit(1);
    }
    if let Some(e) = &elector
        && let Err(err) = e.release().await
    {
        warn!(error = %err, "could not release the Lease; a standby takes over when it expires");
    }
    info!("stopped");
    Ok(())
}

/// Asks the API server for its version until it answers, so a pod that starts before its node routes the
/// `kubernetes` Service (or while the API server restarts) waits, not ready, instead of exiting into kubelet's
/// crash-loop back-off (which grows to minutes). Each try has its own timeout: the client's read timeout is minutes.
/// Returns false if asked to stop first.
async fn reach_api_server(client: &kube::Client, mut stop: watch::Receiver<bool>) -> bool {
    const TRY_TIMEOUT: Duration = Duration::from_secs(5);
    const MAX_PAUSE: Duration = Duration::from_secs(5);
    let mut pause = Duration::from_millis(250);
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let error = match tokio::time::timeout(TRY_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(version)) => {
                info!(version = %version.git_version, attempt, "API server reached");
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {TRY_TIMEOUT:?}"),
        };
        warn!(%error, attempt, "API server not reached; retrying (/readyz fails until it is)");
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return false,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Waits for the Lease, then keeps renewing it in the background. Returns a flag that turns true if the Lease is
/// lost, or None if asked to stop while waiting.
async fn lead(elector: &LeaderElector, mut stop: watch::Receiver<bool>) -> Option<watch::Receiver<bool>> {
    let retry = elector.lease_duration / 3;
    let mut last_holder = None;
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(Leadership::Leading) => break,
            Ok(Leadership::Following { holder }) => {
                if last_holder.as_ref() != Some(&holder) {
                    info!(%holder, "waiting for the leader Lease");
                    last_holder = Some(holder);
                }
            }
            Err(e) => warn!(error = %e, "leader election request failed"),
        }
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return None,
            () = tokio::time::sleep(retry) => {}
        }
    }
    info!("acquired the leader Lease");
    let (lost_tx, lost_rx) = watch::channel(false);
    let renewer = elector.clone();
    tokio::spawn(async move {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(retry).await;
            match renewer.try_acquire_or_renew().await {
                Ok(Leadership::Leading) => last_ok = tokio::time::Instant::now(),
                Ok(Leadership::Following { holder }) => {
                    error!(%holder, "another replica holds the Lease");
                    let _ = lost_tx.send(true);
                    return;
                }
                Err(e) => warn!(error = %e, "could not renew the Lease"),
            }
            // Stop before the lease can expire under us, so two leaders never overlap.
            if last_ok.elapsed() >= renewer.lease_duration * 2 / 3 {
                let _ = lost_tx.send(true);
                return;
            }
        }
    });
    Some(lost_rx)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
