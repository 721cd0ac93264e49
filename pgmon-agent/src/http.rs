//! The HTTP endpoint (hyper): `/metrics` (Prometheus), `/healthz`, `/api/v1/status`, the
//! read API ([`crate::api`]: `/api/v1/overview`, `/autovacuum`, `/top-queries`, `/storage`,
//! `/partitions`, `/replication`), and the manual levers `POST /api/v1/storage/unlock?role=`,
//! `POST /api/v1/budget/unlock?role=` (`pgmon-agent unlock [--budget]`) and
//! `POST /api/v1/cost/forget` (`pgmon-agent cost forget`), which are accepted from
//! loopback peers only: anyone who can scrape a non-loopback
//! `metrics.listen` must not be able to unlock roles.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::oneshot};

use serde::Deserialize;

use crate::{
    api::text,
    metrics::Metrics,
    status::{StatusRequest, request_status},
    util::now_ms,
};

/// The HTTP endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to listen on. Default `127.0.0.1:8181`.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8181)),
        }
    }
}

/// What the server needs.
#[derive(Clone)]
pub struct Endpoint {
    /// The exporter behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// What the health loops last read (`/healthz` answers 503 when it is degraded).
    pub health: crate::health::Board,
    /// The alerts in flight (`/api/v1/alerts`).
    pub alerts: crate::alerts::AlertBook,
    /// To the capture thread.
    pub status: std::sync::mpsc::Sender<StatusRequest>,
    /// Milliseconds since the UNIX epoch of the capture thread's last drain.
    pub last_drain_ms: Arc<std::sync::atomic::AtomicU64>,
    /// The storage coordinator, when `storage.enabled`.
    pub storage: Option<crate::storage::StorageHandle>,
    /// The cost cache and its persisted rows, when budgets and `cost.enabled` are on.
    pub cost: Option<crate::cost::Control>,
    /// To the capture thread's budgets, when `budgets.enabled`.
    pub budget_reset: Option<std::sync::mpsc::Sender<crate::budget::reset::ResetRequest>>,
    /// The read API.
    pub api: Arc<crate::api::Api>,
}

/// Binds `addr`; errors if the address is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves connections until the task is dropped.
pub async fn serve(listener: TcpListener, endpoint: Endpoint) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ep = endpoint.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(ep.clone(), peer, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The manual levers, POSTed by the CLI from the agent's host.
#[derive(Clone, Copy)]
enum Lever {
    StorageUnlock,
    BudgetUnlock,
    CostForget,
}

impl Lever {
    fn name(self) -> &'static str {
        match self {
            Lever::StorageUnlock | Lever::BudgetUnlock => "unlock",
            Lever::CostForget => "cost forget",
        }
    }
}

async fn handle(
    ep: Endpoint,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::POST {
        let lever = match req.uri().path() {
            "/api/v1/storage/unlock" => Some(Lever::StorageUnlock),
            "/api/v1/budget/unlock" => Some(Lever::BudgetUnlock),
            "/api/v1/cost/forget" => Some(Lever::CostForget),
            _ => None,
        };
        if let Some(lever) = lever {
            // Anyone who can scrape a non-loopback `metrics.listen` must not pull a lever.
            if !peer.ip().is_loopback() {
                return Ok(text(
                    StatusCode::FORBIDDEN,
                    "text/plain",
                    format!("{} is accepted from the agent's host only\n", lever.name()),
                ));
            }
            return Ok(match lever {
                Lever::StorageUnlock => unlock(&ep, &req).await,
                Lever::BudgetUnlock => unlock_budget(&ep, &req).await,
                Lever::CostForget => cost_forget(&ep, &req).await,
            });
        }
    }
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
                let degraded = ep.health.degraded();
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
        "/api/v1/status" => match request_status(&ep.status).await {
            Ok(mut status) => {
                if let Some(s) = &ep.storage {
                    status.storage = s.status().await;
                }
                text(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string_pretty(&status).unwrap_or_default(),
                )
            }
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        path if crate::api::Api::handles(path) => ep.api.respond(path, req.uri().query()).await,
        "/api/v1/alerts" => alerts(&ep),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz, /api/v1/status, /api/v1/overview\n".into(),
        ),
    })
}

/// `GET /api/v1/alerts`: the alert engine's firing and pending alerts, its recent
/// transitions and its rules, each with its expression ([`crate::alerts::View`]).
fn alerts(ep: &Endpoint) -> Response<Full<Bytes>> {
    text(
        StatusCode::OK,
        "application/json",
        crate::api::alerts::json(&ep.alerts),
    )
}

/// `POST /api/v1/storage/unlock?role=NAME`: 200 with what `pgmon.unlock_role` said, 409
/// when the role is not locked by the storage quota (or the database refused), 403 from a
/// non-loopback peer, 404 when storage quotas are off.
async fn unlock(ep: &Endpoint, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(storage) = &ep.storage else {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "storage quotas are off (storage.enabled: false)\n".into(),
        );
    };
    let Some(role) = role_param(req) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "need ?role=NAME\n".into(),
        );
    };
    match storage.unlock(role).await {
        Ok(msg) => text(StatusCode::OK, "text/plain", format!("{msg}\n")),
        Err(msg) => text(StatusCode::CONFLICT, "text/plain", format!("{msg}\n")),
    }
}

/// The `role` of the query string, if any and not empty.
fn role_param(req: &Request<Incoming>) -> Option<String> {
    query_params(req)
        .into_iter()
        .find(|(k, _)| k == "role")
        .map(|(_, v)| v)
        .filter(|r| !r.is_empty())
}

/// `POST /api/v1/budget/unlock?role=NAME`: resets the role's budget ledger and ladder step
/// and gives back what the step took ([`crate::budget::reset`]). 200 with what was done
/// and the role's settings now, 409 when the role has no budget (or the database
/// refused), 403 from a non-loopback peer, 404 when budgets are off, 503 when the capture
/// thread or the enforcer does not answer within 40 s.
async fn unlock_budget(ep: &Endpoint, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(tx) = &ep.budget_reset else {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "budgets are off (budgets.enabled: false)\n".into(),
        );
    };
    let Some(role) = role_param(req) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "need ?role=NAME\n".into(),
        );
    };
    let (reply, rx) = oneshot::channel();
    let request = crate::budget::reset::ResetRequest { role, reply };
    if tx.send(request).is_err() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "capture stopped\n".into(),
        );
    }
    match tokio::time::timeout(Duration::from_secs(40), rx).await {
        Ok(Ok(Ok(msg))) => text(StatusCode::OK, "text/plain", format!("{msg}\n")),
        Ok(Ok(Err(msg))) => text(StatusCode::CONFLICT, "text/plain", format!("{msg}\n")),
        Ok(Err(_)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "the enforcer dropped the request (its database connection failed; see the agent's log)\n"
                .into(),
        ),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "no answer within 40 s\n".into(),
        ),
    }
}

/// The values of a query string, decoded.
fn query_params(req: &Request<Incoming>) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `POST /api/v1/cost/forget?fingerprint=HEX`, `?relation=NAME[&database=DB]` or
/// `?all=true` (what `pgmon-agent cost forget` calls): 200 with what was forgotten, 400 on
/// a bad request, 403 from a non-loopback peer, 404 when costing is off, 503 when the
/// persisted rows could not be deleted (the cache was).
async fn cost_forget(ep: &Endpoint, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(cost) = &ep.cost else {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "cost estimates are off (budgets.enabled or cost.enabled is false)\n".into(),
        );
    };
    let what = match forget_of(&query_params(req)) {
        Ok(w) => w,
        Err(why) => return text(StatusCode::BAD_REQUEST, "text/plain", format!("{why}\n")),
    };
    match cost.forget(what).await {
        Ok(msg) => text(StatusCode::OK, "text/plain", format!("{msg}\n")),
        Err(msg) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{msg}\n"),
        ),
    }
}

/// What the parameters of `/api/v1/cost/forget` name: exactly one of `fingerprint` (16 hex
/// digits, as `/metrics` labels it), `relation` (with an optional `database`) or
/// `all=true`.
fn forget_of(params: &[(String, String)]) -> Result<crate::cost::Forget, String> {
    use crate::cost::Forget;
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let unknown: Vec<&str> = params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !["fingerprint", "relation", "database", "all"].contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(format!("unknown parameter(s): {}", unknown.join(", ")));
    }
    match (get("fingerprint"), get("relation"), get("all")) {
        (Some(f), None, None) if get("database").is_none() => u64::from_str_radix(f, 16)
            .map(Forget::Fingerprint)
            .map_err(|_| {
                format!("fingerprint {f:?}: need 16 hex digits (the fingerprint label of /metrics)")
            }),
        (None, Some(r), None) if !r.is_empty() => Ok(Forget::Relation {
            relation: r.rsplit('.').next().unwrap_or(r).to_owned(),
            database: get("database").map(str::to_owned),
        }),
        (None, None, Some("true")) if get("database").is_none() => Ok(Forget::All),
        _ => Err(
            "need exactly one of ?fingerprint=HEX, ?relation=NAME[&database=DB], ?all=true".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cost_forget_takes_exactly_one_target() {
        use crate::cost::Forget;
        let p = |q: &[(&str, &str)]| {
            super::forget_of(
                &q.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            p(&[("fingerprint", "00000000000000ff")]),
            Ok(Forget::Fingerprint(255))
        );
        assert_eq!(
            p(&[("relation", "public.items"), ("database", "app")]),
            Ok(Forget::Relation {
                relation: "items".into(),
                database: Some("app".into())
            })
        );
        assert_eq!(p(&[("all", "true")]), Ok(Forget::All));
        assert!(p(&[]).is_err());
        assert!(p(&[("all", "true"), ("relation", "t")]).is_err());
        assert!(p(&[("fingerprint", "xyz")]).unwrap_err().contains("hex"));
        assert!(p(&[("relaton", "t")]).unwrap_err().contains("relaton"));
    }
}
