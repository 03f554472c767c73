//! Command-line flags; each has an environment variable so a Deployment can set it either way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;

#[derive(Parser, Debug, Clone)]
#[command(name = "videodelivery-agent", version, args_override_self = true)]
#[command(about = "Verifies signed URLs and streams byte ranges from storage")]
pub struct Config {
    /// Address for video traffic: HTTP/1.1 and cleartext HTTP/2, or HTTPS (HTTP/2 and HTTP/1.1) with --tls-cert.
    #[arg(long, env = "VD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// PEM certificate chain (leaf first) for HTTPS on the video port, e.g. a mounted kubernetes.io/tls Secret's
    /// tls.crt; needs --tls-key. Reloaded when it changes: new connections get the new certificate.
    #[arg(long, env = "VD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching --tls-cert, e.g. the Secret's tls.key; needs --tls-cert.
    #[arg(long, env = "VD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// How often the TLS certificate and key files are checked for changes.
    #[arg(long, env = "VD_TLS_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub tls_poll: Duration,
    /// Address for /metrics, /healthz and /readyz (always cleartext HTTP).
    #[arg(long, env = "VD_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// file:///dir (the embedded default) or s3://bucket[/prefix].
    #[arg(long, env = "VD_STORAGE")]
    pub storage: String,
    /// S3 endpoint for non-AWS stores (MinIO, R2, GCS, versitygw).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
    /// Path-style S3 requests (http://host/bucket/key), which most self-hosted stores need.
    #[arg(long, env = "VD_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// The keyring JSON file (the mounted Secret); reloaded when it changes.
    #[arg(long, env = "VD_KEYRING")]
    pub keyring: PathBuf,
    /// URL path under which objects are served: {route-prefix}/{object path}.
    #[arg(long, env = "VD_ROUTE_PREFIX", default_value = "/videos")]
    pub route_prefix: String,
    /// Longest token lifetime accepted, whatever the token claims.
    #[arg(long, env = "VD_MAX_TOKEN_LIFETIME", default_value = "24h", value_parser = vd_token::duration::parse_std)]
    pub max_token_lifetime: Duration,
    /// Clock difference tolerated between signers and this agent.
    #[arg(long, env = "VD_CLOCK_SKEW", default_value = "30s", value_parser = vd_token::duration::parse_std)]
    pub clock_skew: Duration,
    /// Path prefixes served without a token (trailers, thumbnails), e.g. /videos/public/. Repeatable.
    #[arg(long = "public-prefix", env = "VD_PUBLIC_PREFIXES", value_delimiter = ',')]
    pub public_prefixes: Vec<String>,
    /// Cache-Control of successful answers.
    #[arg(long, env = "VD_CACHE_CONTROL", default_value = "private, max-age=3600")]
    pub cache_control: String,
    /// Origins allowed to read answers from scripts (players on another origin); `*` for any. Repeatable.
    #[arg(long = "cors-origin", env = "VD_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Requests per second per client address; 0 turns the limit off.
    #[arg(long, env = "VD_RATE_LIMIT", default_value_t = 50)]
    pub rate_limit: u32,
    /// Requests a client may make at once above the rate.
    #[arg(long, env = "VD_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,
    /// Response bodies streamed at once; more get 503 with Retry-After.
    #[arg(long, env = "VD_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,
    /// Peers whose X-Forwarded-For is believed (load balancers, CDNs), as CIDRs. Repeatable.
    #[arg(long = "trusted-proxy", env = "VD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// Connections open at once on the video port; at the cap, accepting pauses until one closes.
    #[arg(long, env = "VD_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How long a connection may stay open with no request in flight (HTTP/1.1 keep-alive and HTTP/2).
    #[arg(long, env = "VD_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Time a client has to send its first byte, then its request headers (slowloris).
    #[arg(long, env = "VD_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Time storage has to answer, and the longest pause between two chunks of a body.
    #[arg(long, env = "VD_STORAGE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub storage_timeout: Duration,
    /// Threads serving the video port, each with its own event loop and its own socket on the port
    /// (SO_REUSEPORT), as nginx's workers; a connection stays on the thread that accepted it. 0: one per CPU the process may use
    /// (its affinity and cgroup quota).
    #[arg(long, env = "VD_WORKERS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub workers: u32,
    /// Pin each worker to one CPU when the process may run on exactly as many CPUs as it has workers, as nginx's
    /// `worker_cpu_affinity auto`: two workers never share a core while another idles. Only for cores the agent has
    /// to itself (taskset, or Kubernetes' static CPU manager giving a Guaranteed pod whole cores): a pinned worker
    /// cannot move away from another busy process on its core.
    #[arg(long, env = "VD_PIN_WORKERS", default_value_t = false, action = clap::ArgAction::Set)]
    pub pin_workers: bool,
    /// Give each worker a listening socket of its own (`SO_REUSEPORT`, as nginx's `listen ... reuseport`): the
    /// kernel spreads new connections over the workers by a hash, whatever each is doing. Off: the workers share
    /// one socket, and a worker takes a connection when it is free to (nginx's default), so a worker held up (its
    /// core shared with a busy process) takes fewer.
    #[arg(long, env = "VD_REUSE_PORT", default_value_t = false, action = clap::ArgAction::Set)]
    pub reuse_port: bool,
    /// With the slice cache off (--cache-size-mib 0), send ranges of 64 KiB and more of a file:// storage with
    /// `sendfile(2)`: from the page cache to the socket without a copy through the agent or memory held per stream
    /// (nginx's `sendfile on`). Cleartext HTTP/1 only; TLS and HTTP/2 copy. The pages are read in on the storage
    /// pool first, within --storage-timeout, so a hung file system never blocks a worker.
    #[arg(long, env = "VD_SENDFILE", default_value_t = true, action = clap::ArgAction::Set)]
    pub sendfile: bool,
    /// Blocking calls on a file:// storage (opens, stats, reads) running at once. A call stuck in the kernel past
    /// --storage-timeout keeps its thread until the kernel returns; when all are stuck, requests get 503 at once,
    /// and /readyz fails while more than half are.
    #[arg(long, env = "VD_MAX_STORAGE_THREADS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_storage_threads: u32,
    /// On SIGTERM, how long the agent keeps accepting with /readyz failing, so load balancers and Kubernetes
    /// endpoints stop routing to it before its listener closes.
    #[arg(long, env = "VD_SHUTDOWN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,
    /// On SIGTERM, after the delay, how long running streams may finish before the process exits.
    #[arg(long, env = "VD_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// How often the keyring file is checked for changes.
    #[arg(long, env = "VD_KEYRING_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub keyring_poll: Duration,
    /// Memory for the slice cache of hot objects, in MiB; 0 turns it off.
    #[arg(long, env = "VD_CACHE_SIZE_MIB", default_value_t = 256)]
    pub cache_size_mib: u64,
    /// Memory in MiB for what streams hold beyond the cache (slices the cache has dropped, read-ahead, uncached
    /// chunks). With the cache it bounds all slice memory; a read that finds none free within --storage-timeout
    /// is refused with 503.
    #[arg(long, env = "VD_STREAM_MEMORY_MIB", default_value_t = 128)]
    pub stream_memory_mib: u64,
    /// Size of a cached slice in KiB: ranges are assembled from aligned slices of this size.
    #[arg(long, env = "VD_SLICE_SIZE_KIB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(64..=65536))]
    pub slice_size_kib: u64,
    /// A local directory (an emptyDir) for the disk tier under the slice cache: slices watched spill there, so
    /// a catalogue larger than memory is read from storage about once. Needs --disk-cache-size-mib. The agent owns
    /// its `slices` folder and wipes it at start; a directory it cannot write is logged and shows in metrics, and
    /// the agent serves from memory and storage as without it.
    #[arg(long, env = "VD_DISK_CACHE_DIR")]
    pub disk_cache_dir: Option<PathBuf>,
    /// Bytes in MiB the disk tier's files may take (files counted in whole 4 KiB blocks); 0 turns it off. Keep it
    /// a little below the volume's size (an emptyDir's sizeLimit) for the directory's own blocks.
    #[arg(long, env = "VD_DISK_CACHE_SIZE_MIB", default_value_t = 0)]
    pub disk_cache_size_mib: u64,
    /// How long an object's size and ETag are remembered: a warm cache then answers without asking storage, and a
    /// replaced object is noticed within this time (every storage read still checks the ETag). 0 asks every time.
    #[arg(long, env = "VD_METADATA_TTL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub metadata_ttl: Duration,
    /// Rewrite HLS playlists and DASH manifests so every segment URI on this host carries a prefix token
    /// (token format §5.6). Off by default: it costs a pass over each manifest and mints a token per request.
    #[arg(long, env = "VD_REWRITE_MANIFESTS")]
    pub rewrite_manifests: bool,
    /// Lifetime of the cookie that {route-prefix}/session sets (token format §5.5); capped at --max-token-lifetime.
    #[arg(long, env = "VD_SESSION_TTL", default_value = "4h", value_parser = vd_token::duration::parse_std)]
    pub session_ttl: Duration,
    /// Send the session cookie without `Secure`: plain-HTTP development only.
    #[arg(long, env = "VD_SESSION_COOKIE_INSECURE")]
    pub session_cookie_insecure: bool,
    /// SameSite of the session cookie: none lets players on another site send it (and needs Secure).
    #[arg(long, env = "VD_SESSION_COOKIE_SAME_SITE", value_enum, default_value = "none")]
    pub session_cookie_same_site: SameSite,
    /// Mark the (Secure) session cookie `Partitioned` (CHIPS): kept per top-level site, so a player on another site
    /// still gets its session where third-party cookies are blocked (Chromium's incognito and Playwright contexts
    /// refuse a plain `SameSite=None` cookie there). `--session-cookie-partitioned=false` turns it off.
    #[arg(long, env = "VD_SESSION_COOKIE_PARTITIONED", default_value_t = true, action = clap::ArgAction::Set)]
    pub session_cookie_partitioned: bool,
    #[arg(long, env = "VD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// One line per request on stdout (method, path with tokens redacted, status, bytes, timings, cache, refusal
    /// reason, client, request id); `--access-log=false` turns it off. Metrics are counted either way.
    #[arg(long, env = "VD_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// Format of the access log: text (one readable line) or json (one object per line, `"log":"access"`).
    #[arg(long, env = "VD_ACCESS_LOG_FORMAT", value_enum, default_value = "text")]
    pub access_log_format: LogFormat,
    /// Share of successful requests logged, 0 to 1; refusals, errors and aborted answers are always logged.
    #[arg(long, env = "VD_ACCESS_LOG_SAMPLE", default_value_t = 1.0, value_parser = sample_ratio)]
    pub access_log_sample: f64,
}

fn sample_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0 and 1 (0.1 logs one successful request in ten)")),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum SameSite {
    None,
    Lax,
    Strict,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::None => "None",
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
        }
    }
}
