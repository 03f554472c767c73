//! Health and metrics on their own port: `/healthz` (the process runs), `/readyz` (it can reach the API server),
//! `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the probes report.
#[derive(Default)]
pub struct Health {
    /// Set once the API server answered; a standby replica is ready too (it only waits for the Lease).
    pub ready: AtomicBool,
}

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (metrics, health) = (metrics.clone(), health.clone());
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let (status, body) = match req.uri().path() {
                "/metrics" => (StatusCode::OK, metrics.encode()),
                "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
                "/readyz" if health.ready.load(Ordering::Relaxed) => (StatusCode::OK, "ok\n".to_owned()),
                "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "API server not reached yet\n".to_owned()),
                _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
            };
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            async move { Ok::<_, Infallible>(resp) }
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}
