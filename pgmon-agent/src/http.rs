//! The HTTP endpoint, an axum [`Router`] on hyper 1 and tokio with one route per endpoint:
//! `/metrics` (Prometheus), `/healthz`, `/api/v1/status`, `/api/v1/alerts`, the read API
//! ([`crate::api`]: `/api/v1/overview`, `/autovacuum`, `/top-queries`, `/storage`,
//! `/partitions`, `/replication`), `/api/v1/history` (the last hour, [`crate::history`]), the
//! web UI (`/` and its files under `/ui/`, [`crate::ui`]), and the manual levers `POST /api/v1/storage/unlock?role=`,
//! `POST /api/v1/budget/unlock?role=` (`pgmon-agent unlock [--budget]`) and
//! `POST /api/v1/cost/forget` (`pgmon-agent cost forget`), which one layer
//! ([`loopback_only`]) answers 403 unless the peer is loopback: anyone who can scrape a
//! non-loopback `metrics.listen` must not be able to unlock roles.
//!
//! Reads are `GET` (and `HEAD`, answered as `GET` without the body); any other method on
//! any path is 405 `GET only`, and a `GET` of a path no route serves (a lever's included) is
//! 404 naming the endpoints. Query strings are read by axum's `Query` (serde); a malformed
//! one is a 400 as a bad parameter is.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{ConnectInfo, Query, Request, State, rejection::QueryRejection},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::{Next, from_fn_with_state},
    response::Response,
    routing::{MethodFilter, on, post},
};
use serde::Deserialize;
use tokio::{net::TcpListener, sync::oneshot};

use crate::{
    api::{ApiError, text},
    metrics::Metrics,
    status::{StatusRequest, request_status},
    util::now_ms,
};

pub mod security;

/// The HTTP endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to listen on. Default `127.0.0.1:8181` (loopback: nothing is reachable from
    /// elsewhere until this is changed).
    pub listen: SocketAddr,
    /// The address the web UI is reached at from outside (e.g. `https://db1.example.com:8181`),
    /// for the links in alert and storage notifications; none when unset (the default).
    pub external_url: Option<String>,
    /// TLS for the listener: `{cert_file, key_file}` (PEM). Default: plain HTTP.
    pub tls: Option<security::TlsFiles>,
    /// HTTP basic authentication for every request: user name → bcrypt hash
    /// (`htpasswd -nBC 10 USER`). Default: none (no authentication).
    pub basic_auth_users: BTreeMap<String, String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8181)),
            external_url: None,
            tls: None,
            basic_auth_users: BTreeMap::new(),
        }
    }
}

impl MetricsConfig {
    /// Checks the fields serde cannot: the users' hashes and the external URL's scheme;
    /// the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        security::validate_users(&self.basic_auth_users)?;
        if let Some(u) = &self.external_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err((
                "metrics.external_url".into(),
                format!("{u:?} does not start with http:// or https://"),
            ));
        }
        Ok(())
    }

    /// The scheme the listener speaks.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// What the server needs.
#[derive(Clone)]
pub struct Endpoint {
    /// The exporter behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// What the health loops last read (`/healthz` judges them).
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
    /// The last hour's samples (`/api/v1/history`, the UI's charts).
    pub history: crate::history::History,
}

/// Binds `addr`; errors if the address is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves connections until the task is dropped: over TLS when `config.tls` is set (the
/// certificate and key are read here; an unreadable one is logged and nothing is served),
/// behind basic authentication when `config.basic_auth_users` is not empty.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, config: MetricsConfig) {
    let mut router = router(Arc::new(endpoint));
    if let Some(users) = security::Users::new(&config.basic_auth_users) {
        router = router.layer(from_fn_with_state(users, security::require_user));
    }
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    let Some(tls) = &config.tls else {
        // axum logs a failed `accept` under the target `axum::serve` and retries.
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP endpoint stopped");
        }
        return;
    };
    let rustls =
        match axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert_file, &tls.key_file)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(cert = %tls.cert_file.display(), key = %tls.key_file.display(),
                    error = %e, "metrics.tls: cannot load the certificate and key; not serving");
                return;
            }
        };
    let std_listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the HTTP endpoint stopped");
            return;
        }
    };
    match axum_server::from_tcp_rustls(std_listener, rustls) {
        Ok(server) => {
            if let Err(e) = server.serve(app).await {
                tracing::error!(error = %e, "the HTTPS endpoint stopped");
            }
        }
        Err(e) => tracing::error!(error = %e, "the HTTPS endpoint stopped"),
    }
}

/// Every route. The levers' state is the name their 403 gives them.
fn router(ep: Arc<Endpoint>) -> Router {
    let mut r = Router::new()
        .route("/metrics", on(MethodFilter::GET, metrics))
        .route("/healthz", on(MethodFilter::GET, healthz))
        .route("/api/v1/status", on(MethodFilter::GET, status))
        .route("/api/v1/alerts", on(MethodFilter::GET, alerts))
        .route("/api/v1/history", on(MethodFilter::GET, history))
        .route("/", on(MethodFilter::GET, ui_index))
        .route("/ui/{file}", on(MethodFilter::GET, ui_asset));
    for endpoint in crate::api::PATHS {
        r = r.route(
            endpoint,
            on(
                MethodFilter::GET,
                move |State(ep): State<Arc<Endpoint>>,
                      query: Result<Query<crate::api::QueryString>, QueryRejection>| async move {
                    let params = query.map_err(|e| ApiError::BadParameter {
                        name: "query",
                        message: e.body_text(),
                    });
                    ep.api
                        .respond(endpoint, params.and_then(|Query(q)| q.try_into()))
                        .await
                },
            ),
        );
    }
    let lever = |name: &'static str| from_fn_with_state(name, loopback_only);
    r.route(
        "/api/v1/storage/unlock",
        post(unlock).route_layer(lever("unlock")),
    )
    .route(
        "/api/v1/budget/unlock",
        post(unlock_budget).route_layer(lever("unlock")),
    )
    .route(
        "/api/v1/cost/forget",
        post(cost_forget).route_layer(lever("cost forget")),
    )
    .method_not_allowed_fallback(unrouted)
    .fallback(unrouted)
    .with_state(ep)
}

/// What a lever (`name`, as its 403 says) needs first: a loopback peer (IPv4-mapped
/// loopback included, for a `metrics.listen` on `[::]`).
async fn loopback_only(
    State(name): State<&'static str>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if peer.ip().to_canonical().is_loopback() {
        next.run(req).await
    } else {
        text(
            StatusCode::FORBIDDEN,
            "text/plain",
            format!("{name} is accepted from the agent's host only\n"),
        )
    }
}

/// A request no route takes: 405 for any method but `GET`, else 404.
async fn unrouted(method: Method) -> Response {
    if method == Method::GET {
        text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz, /api/v1/status, /api/v1/overview\n".into(),
        )
    } else {
        text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        )
    }
}

/// `GET /api/v1/history`: the last hour's samples ([`crate::history::HistoryDocument`]).
async fn history(State(ep): State<Arc<Endpoint>>) -> Response {
    text(
        StatusCode::OK,
        "application/json",
        serde_json::to_string(&ep.history.document()).unwrap_or_default(),
    )
}

/// `GET /`: the web UI's page.
async fn ui_index() -> Response {
    embedded(&crate::ui::INDEX)
}

/// `GET /ui/FILE`: one of the UI's embedded files, else 404.
async fn ui_asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match crate::ui::asset(&file) {
        Some(a) => embedded(a),
        None => text(StatusCode::NOT_FOUND, "text/plain", "no such file\n".into()),
    }
}

fn embedded(a: &crate::ui::Asset) -> Response {
    use axum::response::IntoResponse as _;
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, a.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        a.bytes,
    )
        .into_response()
}

/// `GET /metrics`: OpenMetrics to a client that accepts it, else the text format 0.0.4.
async fn metrics(State(ep): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    // Prometheus asks for OpenMetrics; anything else (curl, promtool, older
    // scrapers) gets the classic text format 0.0.4.
    let openmetrics = headers
        .get(header::ACCEPT)
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

/// `GET /healthz`: 503 `unhealthy: REASON; REASON` when the capture thread has not
/// drained for 5 s or the health loops say so ([`crate::health::Board::unhealthy`]: the
/// database unreachable for a fast-loop interval, a loop failing 3 runs in a row or
/// missing its schedule); else 200 `ok`, naming the loops whose last run was over budget.
async fn healthz(State(ep): State<Arc<Endpoint>>) -> Response {
    let now = now_ms();
    let last = ep.last_drain_ms.load(std::sync::atomic::Ordering::Relaxed);
    let mut reasons = Vec::new();
    if last == 0 || now.saturating_sub(last) >= 5_000 {
        reasons.push(format!(
            "capture thread has not drained for {} ms",
            now.saturating_sub(last)
        ));
    }
    reasons.extend(ep.health.unhealthy(now));
    if !reasons.is_empty() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("unhealthy: {}\n", reasons.join("; ")),
        );
    }
    let degraded = ep.health.degraded();
    let body = if degraded.is_empty() {
        "ok\n".to_owned()
    } else {
        format!("ok, degraded: {}\n", degraded.join(", "))
    };
    text(StatusCode::OK, "text/plain", body)
}

/// `GET /api/v1/status`: the capture thread's status document with the storage section;
/// 503 when the capture thread does not answer.
async fn status(State(ep): State<Arc<Endpoint>>) -> Response {
    match request_status(&ep.status).await {
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
    }
}

/// `GET /api/v1/alerts`: the alert engine's firing and pending alerts, its recent
/// transitions and its rules, each with its expression ([`crate::alerts::View`]).
async fn alerts(State(ep): State<Arc<Endpoint>>) -> Response {
    text(
        StatusCode::OK,
        "application/json",
        crate::api::alerts::json(&ep.alerts),
    )
}

/// The query string of the unlock levers: `?role=NAME` (other keys are ignored).
#[derive(Debug, Deserialize)]
struct RoleQuery {
    role: Option<String>,
}

/// The `role` of the query string, if any and not empty.
fn role_param(query: Result<Query<RoleQuery>, QueryRejection>) -> Option<String> {
    query
        .ok()
        .and_then(|Query(q)| q.role)
        .filter(|r| !r.is_empty())
}

/// `POST /api/v1/storage/unlock?role=NAME`: 200 with what `pgmon.unlock_role` said, 409
/// when the role is not locked by the storage quota (or the database refused), 403 from a
/// non-loopback peer, 404 when storage quotas are off.
async fn unlock(
    State(ep): State<Arc<Endpoint>>,
    query: Result<Query<RoleQuery>, QueryRejection>,
) -> Response {
    let Some(storage) = &ep.storage else {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "storage quotas are off (storage.enabled: false)\n".into(),
        );
    };
    let Some(role) = role_param(query) else {
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

/// `POST /api/v1/budget/unlock?role=NAME`: resets the role's budget ledger and ladder step
/// and gives back what the step took ([`crate::budget::reset`]). 200 with what was done
/// and the role's settings now, 409 when the role has no budget (or the database
/// refused), 403 from a non-loopback peer, 404 when budgets are off, 503 when the capture
/// thread or the enforcer does not answer within 40 s.
async fn unlock_budget(
    State(ep): State<Arc<Endpoint>>,
    query: Result<Query<RoleQuery>, QueryRejection>,
) -> Response {
    let Some(tx) = &ep.budget_reset else {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "budgets are off (budgets.enabled: false)\n".into(),
        );
    };
    let Some(role) = role_param(query) else {
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

/// `POST /api/v1/cost/forget?fingerprint=HEX`, `?relation=NAME[&database=DB]` or
/// `?all=true` (what `pgmon-agent cost forget` calls): 200 with what was forgotten, 400 on
/// a bad request, 403 from a non-loopback peer, 404 when costing is off, 503 when the
/// persisted rows could not be deleted (the cache was).
async fn cost_forget(
    State(ep): State<Arc<Endpoint>>,
    query: Result<Query<ForgetQuery>, QueryRejection>,
) -> Response {
    let Some(cost) = &ep.cost else {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "cost estimates are off (budgets.enabled or cost.enabled is false)\n".into(),
        );
    };
    let what = match query
        .map_err(|e| e.body_text())
        .and_then(|Query(q)| forget_of(q))
    {
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

/// The query string of `/api/v1/cost/forget`.
#[derive(Debug, Default, Deserialize)]
struct ForgetQuery {
    fingerprint: Option<String>,
    relation: Option<String>,
    database: Option<String>,
    all: Option<String>,
    /// Any other key: refused, named in the 400.
    #[serde(flatten)]
    unknown: BTreeMap<String, String>,
}

/// What the parameters of `/api/v1/cost/forget` name: exactly one of `fingerprint` (16 hex
/// digits, as `/metrics` labels it), `relation` (with an optional `database`) or
/// `all=true`.
fn forget_of(q: ForgetQuery) -> Result<crate::cost::Forget, String> {
    use crate::cost::Forget;
    if !q.unknown.is_empty() {
        let names: Vec<&str> = q.unknown.keys().map(String::as_str).collect();
        return Err(format!("unknown parameter(s): {}", names.join(", ")));
    }
    match (q.fingerprint, q.relation, q.all.as_deref(), q.database) {
        (Some(f), None, None, None) => u64::from_str_radix(&f, 16)
            .map(Forget::Fingerprint)
            .map_err(|_| {
                format!("fingerprint {f:?}: need 16 hex digits (the fingerprint label of /metrics)")
            }),
        (None, Some(r), None, database) if !r.is_empty() => Ok(Forget::Relation {
            relation: r.rsplit('.').next().unwrap_or(&r).to_owned(),
            database,
        }),
        (None, None, Some("true"), None) => Ok(Forget::All),
        _ => Err(
            "need exactly one of ?fingerprint=HEX, ?relation=NAME[&database=DB], ?all=true".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::Query;

    #[test]
    fn cost_forget_takes_exactly_one_target() {
        use crate::cost::Forget;
        // Through axum's `Query`, as the handler reads it.
        let p = |q: &str| {
            let uri = format!("/api/v1/cost/forget?{q}").parse().unwrap();
            Query::try_from_uri(&uri)
                .map_err(|e| e.body_text())
                .and_then(|Query(q)| super::forget_of(q))
        };
        assert_eq!(
            p("fingerprint=00000000000000ff"),
            Ok(Forget::Fingerprint(255))
        );
        assert_eq!(
            p("relation=public.items&database=app"),
            Ok(Forget::Relation {
                relation: "items".into(),
                database: Some("app".into())
            })
        );
        assert_eq!(
            p("relation=t%C3%A9"),
            Ok(Forget::Relation {
                relation: "té".into(),
                database: None
            })
        );
        assert_eq!(p("all=true"), Ok(Forget::All));
        assert!(p("").is_err());
        assert!(p("all=false").is_err());
        assert!(p("relation=").is_err());
        assert!(p("all=true&relation=t").is_err());
        assert!(p("all=true&database=app").is_err());
        assert!(p("fingerprint=xyz").unwrap_err().contains("hex"));
        assert_eq!(
            p("relaton=t&zz=1"),
            Err("unknown parameter(s): relaton, zz".into())
        );
        assert!(p("all=true&all=true").is_err(), "a key twice is refused");
    }

    #[test]
    fn unlock_takes_the_role() {
        let p = |q: &str| {
            let uri = format!("/api/v1/budget/unlock?{q}").parse().unwrap();
            super::role_param(Query::try_from_uri(&uri))
        };
        assert_eq!(p("role=t%C3%A9nant+1"), Some("ténant 1".into()));
        assert_eq!(p("role=a&other=1"), Some("a".into()));
        assert_eq!(p("role="), None);
        assert_eq!(p(""), None);
    }
}
