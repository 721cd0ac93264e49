//! The HTTP endpoint (hyper): `/metrics` (Prometheus), `/healthz`, `/api/v1/status`.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::oneshot};

use crate::{metrics::Metrics, status::Status};

/// A request for a fresh status document, answered by the capture thread.
pub type StatusRequest = oneshot::Sender<Status>;

/// What the server needs.
#[derive(Clone)]
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    /// To the capture thread.
    pub status: std::sync::mpsc::Sender<StatusRequest>,
    /// Milliseconds since the UNIX epoch of the capture thread's last drain.
    pub last_drain_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// Binds `addr`; errors if the address is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves connections until the task is dropped.
pub async fn serve(listener: TcpListener, endpoint: Endpoint) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ep = endpoint.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(ep.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        content_type.parse().expect("static"),
    );
    r
}

async fn handle(ep: Endpoint, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            // Prometheus asks for OpenMetrics; anything else (curl, promtool, older
            // scrapers) gets the classic text format 0.0.4.
            let openmetrics = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            if openmetrics {
                text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ep.metrics.encode(),
                )
            } else {
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    crate::metrics::to_text_format(&ep.metrics.encode()),
                )
            }
        }
        "/healthz" => {
            let now = now_ms();
            let last = ep.last_drain_ms.load(std::sync::atomic::Ordering::Relaxed);
            if last != 0 && now.saturating_sub(last) < 5_000 {
                let degraded = ep.metrics.health.degraded();
                let body = if degraded.is_empty() {
                    "ok\n".to_owned()
                } else {
                    format!("ok, degraded: {}\n", degraded.join(", "))
                };
                text(StatusCode::OK, "text/plain", body)
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "capture thread has not drained for {} ms\n",
                        now.saturating_sub(last)
                    ),
                )
            }
        }
        "/api/v1/status" => {
            let (tx, rx) = oneshot::channel();
            if ep.status.send(tx).is_err() {
                return Ok(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "capture stopped\n".into(),
                ));
            }
            match tokio::time::timeout(Duration::from_secs(5), rx).await {
                Ok(Ok(status)) => text(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string_pretty(&status).unwrap_or_default(),
                ),
                _ => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "capture thread busy\n".into(),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz, /api/v1/status\n".into(),
        ),
    })
}

/// Milliseconds since the UNIX epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
