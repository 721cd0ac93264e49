//! The read API of issue 5: `GET /api/v1/overview`, `/autovacuum`, `/top-queries`,
//! `/storage`, `/partitions`, `/replication` and `/settings`, answered from live SQL, and
//! `/audit` (pgmon's own audit rows).
//!
//! Every answer is one JSON object, the [`Envelope`]:
//!
//! ```json
//! {"endpoint": "/api/v1/autovacuum", "database": "app",
//!  "generated_at": "2024-05-01T12:00:00.000Z", "elapsed_ms": 4.2,
//!  "sql": [{"name": "tables", "by": "api", "database": "app", "text": "SELECT …"}],
//!  "data": {…}}
//! ```
//!
//! `sql` lists every statement whose rows are in `data`, in the order they ran, with the
//! database it ran in and who ran it (`api` for this request; `storage coordinator` or
//! `health loop medium` when a figure comes from the agent's own tasks). Errors are
//! `{"endpoint": …, "error": "…"}` with 400 (a bad parameter), 404 (an unknown database),
//! 503 (cluster unreachable, a statement or the whole request over its time limit) or 500
//! (any other database error).
//!
//! The statements run on one API monitor session, opened on the first request with the
//! health loops' settings ([`crate::health::session_setup`]: `application_name = pgmon`,
//! read-only, `statement_timeout` [`STATEMENT_TIMEOUT_MS`], `lock_timeout` of
//! `health.lock_timeout_ms`) and reopened when it closes. Requests take turns on it, so the
//! API never holds more than two sessions (that one and a short-lived one in another
//! database for `?database=`). The SQL is the health loops' where they read the same thing
//! (`crate::health::{fast, medium, databases}`).

pub mod alerts;
mod audit;
mod cluster;
mod session;
mod settings;
mod storage;
mod tables;
mod top_queries;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse as _, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::{Client, Row, types::ToSql, types::Type};

use crate::{health::Board, status::StatusRequest, storage::StorageHandle};

/// `statement_timeout` of the API's sessions, milliseconds.
pub const STATEMENT_TIMEOUT_MS: u64 = 5_000;

/// Longest a request may take, connection and every statement included, seconds; past it
/// the answer is 503.
pub const REQUEST_TIMEOUT_SECONDS: u64 = 15;

/// Largest `?limit=`.
pub const MAX_LIMIT: usize = 1_000;

/// The endpoints this module answers (each a route of [`crate::http`]).
pub const PATHS: [&str; 8] = [
    "/api/v1/overview",
    "/api/v1/autovacuum",
    "/api/v1/top-queries",
    "/api/v1/storage",
    "/api/v1/partitions",
    "/api/v1/replication",
    "/api/v1/audit",
    "/api/v1/settings",
];

/// What the API needs from the running agent.
pub struct Api {
    monitor: crate::db::DbConfig,
    setup: String,
    top_n: usize,
    max_databases: usize,
    data_directory: PathBuf,
    session: tokio::sync::Mutex<Option<session::Session>>,
    status: std::sync::mpsc::Sender<StatusRequest>,
    storage: Option<StorageHandle>,
    board: Board,
    /// `security.redact_sql_text`: `pg_stat_statements`' texts are not shown either.
    redact_sql_text: bool,
}

/// One statement behind an answer.
#[derive(Clone, Debug, Serialize)]
pub struct SqlRun {
    /// What it reads (`tables`, `dead_tuples`, …).
    pub name: &'static str,
    /// `api`, or the agent task that ran it (`storage coordinator`, `health loop medium`).
    pub by: &'static str,
    /// The database it ran in; absent when it ran in every database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The SQL text (owned when it names an extension's schema found at run time).
    pub text: std::borrow::Cow<'static, str>,
}

/// A response of `status` with `body` as `content_type`.
pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The JSON object every endpoint answers with.
#[derive(Debug, Serialize)]
pub struct Envelope {
    /// The path asked.
    pub endpoint: &'static str,
    /// The database of the per-database parts (`?database=`, default the monitor
    /// connection's); absent for cluster-wide endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// When the answer was made, RFC 3339 UTC.
    pub generated_at: String,
    /// Time spent answering, milliseconds.
    pub elapsed_ms: f64,
    /// The statements behind `data`, in the order they ran.
    pub sql: Vec<SqlRun>,
    /// The endpoint's content (README, "API").
    pub data: Value,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query-string parameter is malformed (400).
    #[error("bad parameter {name}: {message}")]
    BadParameter {
        /// The parameter.
        name: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// `?database=` names no database that accepts connections (404).
    #[error("no database named {0:?} accepts connections in this cluster")]
    UnknownDatabase(String),
    /// The monitor session could not be opened (503).
    #[error("cannot reach the cluster")]
    Unreachable(#[source] crate::db::DbError),
    /// A statement failed (503 when the session closed or the statement timed out,
    /// 500 otherwise).
    #[error("query {name} failed")]
    Query {
        /// The statement's name in `sql`.
        name: &'static str,
        /// The driver's or the server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The request took longer than [`REQUEST_TIMEOUT_SECONDS`] (503).
    #[error("no answer within {REQUEST_TIMEOUT_SECONDS} s")]
    Timeout,
}

impl ApiError {
    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnknownDatabase(_) => StatusCode::NOT_FOUND,
            ApiError::Unreachable(_) | ApiError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Query { source, .. } => {
                // 57014 query_canceled (statement_timeout), 55P03 lock_not_available
                // (lock_timeout): PostgreSQL docs, appendix A.
                let timed_out = source
                    .as_db_error()
                    .is_some_and(|d| ["57014", "55P03"].contains(&d.code().code()));
                if source.is_closed() || source.as_db_error().is_none() || timed_out {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            }
        }
    }
}

/// The query string of a request as serde reads it (axum's `Query` in [`crate::http`]);
/// [`Params`] checks it.
#[derive(Debug, Default, Deserialize)]
pub struct QueryString {
    database: Option<String>,
    /// Kept as text so a bad value gets [`Params`]' message, not serde's.
    limit: Option<String>,
    role: Option<String>,
    /// Any other key: refused, so a typo does not silently return the defaults.
    #[serde(flatten)]
    unknown: BTreeMap<String, String>,
}

/// The parameters of a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    /// `?database=NAME`.
    pub database: Option<String>,
    /// `?limit=N`, 1 to [`MAX_LIMIT`].
    pub limit: Option<usize>,
    /// `?role=NAME` (`/api/v1/audit` only).
    pub role: Option<String>,
}

impl TryFrom<QueryString> for Params {
    type Error = ApiError;

    /// Checks a query string (`database=app&limit=5`): no unknown key, no empty
    /// `database` or `role`, `limit` from 1 to [`MAX_LIMIT`].
    fn try_from(q: QueryString) -> Result<Self, ApiError> {
        let empty = [("database", &q.database), ("role", &q.role)]
            .into_iter()
            .find(|(_, v)| v.as_ref().is_some_and(String::is_empty))
            .map(|(k, _)| k);
        if let Some(k) = q.unknown.keys().map(String::as_str).chain(empty).next() {
            return Err(ApiError::BadParameter {
                name: "query",
                message: format!("unknown or empty parameter {k:?} (database, limit, role)"),
            });
        }
        let limit = match q.limit {
            None => None,
            Some(v) => Some(
                v.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| ApiError::BadParameter {
                        name: "limit",
                        message: format!("{v:?} is not a whole number from 1 to {MAX_LIMIT}"),
                    })?,
            ),
        };
        Ok(Params {
            database: q.database,
            limit,
            role: q.role,
        })
    }
}

/// The statements of one answer, recorded as they run.
pub(crate) struct Recorder {
    pub sql: Vec<SqlRun>,
}

impl Recorder {
    /// Records a statement run outside [`Recorder::raw`]: by an agent task (`by`), or by
    /// this request in every database (`database` `None`).
    pub fn note(
        &mut self,
        name: &'static str,
        by: &'static str,
        database: Option<&str>,
        text: &'static str,
    ) {
        self.sql.push(SqlRun {
            name,
            by,
            database: database.map(str::to_owned),
            text: text.into(),
        });
    }

    /// Runs `text` on `client` (in `database`) and returns its rows as JSON objects; the
    /// keys are `columns` when given (the health loops' SQL leaves some unnamed), else the
    /// columns' own names.
    pub async fn rows(
        &mut self,
        client: &Client,
        database: &str,
        (name, text): (&'static str, impl Into<std::borrow::Cow<'static, str>>),
        params: &[&(dyn ToSql + Sync)],
        columns: &[&'static str],
    ) -> Result<Vec<Value>, ApiError> {
        let rows = self.raw(client, database, (name, text), params).await?;
        Ok(rows.iter().map(|r| row_json(r, columns)).collect())
    }

    /// [`Recorder::rows`] without the conversion.
    pub async fn raw(
        &mut self,
        client: &Client,
        database: &str,
        (name, text): (&'static str, impl Into<std::borrow::Cow<'static, str>>),
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, ApiError> {
        let text = text.into();
        let result = client.query(&*text, params).await;
        self.sql.push(SqlRun {
            name,
            by: "api",
            database: Some(database.to_owned()),
            text,
        });
        result.map_err(|source| ApiError::Query { name, source })
    }
}

/// One row as a JSON object (see [`Recorder::rows`]). Booleans, integers, floats, text and
/// arrays of integers or text map to their JSON kind; NULL, NaN and other types to null.
pub fn row_json(row: &Row, columns: &[&'static str]) -> Value {
    let mut m = serde_json::Map::new();
    for (i, c) in row.columns().iter().enumerate() {
        let key = columns.get(i).copied().unwrap_or(c.name());
        let v = match *c.type_() {
            Type::BOOL => json(row.try_get::<_, Option<bool>>(i)),
            Type::INT2 => json(row.try_get::<_, Option<i16>>(i)),
            Type::INT4 => json(row.try_get::<_, Option<i32>>(i)),
            Type::INT8 => json(row.try_get::<_, Option<i64>>(i)),
            Type::OID => json(row.try_get::<_, Option<u32>>(i)),
            Type::FLOAT4 => json(row.try_get::<_, Option<f32>>(i)),
            Type::FLOAT8 => json(row.try_get::<_, Option<f64>>(i)),
            Type::INT4_ARRAY => json(row.try_get::<_, Option<Vec<Option<i32>>>>(i)),
            Type::TEXT_ARRAY => json(row.try_get::<_, Option<Vec<Option<String>>>>(i)),
            _ => json(row.try_get::<_, Option<String>>(i)),
        };
        m.insert(key.to_owned(), v);
    }
    Value::Object(m)
}

fn json<T: Into<Value>>(v: Result<Option<T>, tokio_postgres::Error>) -> Value {
    v.ok().flatten().map_or(Value::Null, Into::into)
}

impl Api {
    /// The API of an agent with the `health` settings (lock timeout, top N, database cap)
    /// watching the cluster in `data_directory`, reaching it through `monitor`, the capture
    /// thread through `status`, the storage coordinator through `storage`, and reading the
    /// health loops' `board`.
    pub fn new(
        health: &crate::health::HealthConfig,
        data_directory: &std::path::Path,
        monitor: crate::db::DbConfig,
        status: std::sync::mpsc::Sender<StatusRequest>,
        storage: Option<StorageHandle>,
        board: Board,
        redact_sql_text: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            redact_sql_text,
            monitor,
            setup: crate::health::session_setup(STATEMENT_TIMEOUT_MS, health.lock_timeout_ms),
            top_n: health.top_n.max(1),
            max_databases: health.max_databases,
            data_directory: data_directory.to_owned(),
            session: tokio::sync::Mutex::new(None),
            status,
            storage,
            board,
        })
    }

    /// Answers `GET endpoint` (one of [`PATHS`]) with its query string's `params` (or
    /// what is wrong with them: a 400).
    pub async fn respond(
        &self,
        endpoint: &'static str,
        params: Result<Params, ApiError>,
    ) -> Response {
        let started = std::time::Instant::now();
        let result = match params {
            Ok(params) => tokio::time::timeout(
                Duration::from_secs(REQUEST_TIMEOUT_SECONDS),
                self.answer(endpoint, &params),
            )
            .await
            .unwrap_or(Err(ApiError::Timeout)),
            Err(e) => Err(e),
        };
        let (status, body) = match result {
            Ok((database, data, sql)) => (
                StatusCode::OK,
                serde_json::to_string_pretty(&Envelope {
                    endpoint,
                    database,
                    generated_at: crate::util::rfc3339(crate::util::now_ms()),
                    elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
                    sql,
                    data,
                }),
            ),
            Err(e) => {
                let error = crate::util::error_chain(&e);
                tracing::debug!(endpoint, error = %error, "API request failed");
                (
                    e.status(),
                    serde_json::to_string_pretty(
                        &serde_json::json!({"endpoint": endpoint, "error": error}),
                    ),
                )
            }
        };
        let mut body = body.unwrap_or_default();
        body.push('\n');
        text(status, "application/json", body)
    }

    /// The answer: (database of the per-database parts, data, SQL).
    async fn answer(
        &self,
        endpoint: &str,
        params: &Params,
    ) -> Result<(Option<String>, Value, Vec<SqlRun>), ApiError> {
        let mut guard = self.session.lock().await;
        let s = session::ensure(&mut guard, &self.monitor, &self.setup).await?;
        let mut rec = Recorder { sql: Vec::new() };
        if params.role.is_some() && endpoint != "/api/v1/audit" {
            return Err(ApiError::BadParameter {
                name: "role",
                message: format!("{endpoint} takes no role (only /api/v1/audit does)"),
            });
        }
        let limit = params.limit.unwrap_or(self.top_n) as i64;
        let result = match endpoint {
            "/api/v1/overview" => cluster::overview(s, &mut rec, &self.board, limit as usize)
                .await
                .map(|d| (None, d)),
            "/api/v1/replication" => cluster::replication(s, &mut rec).await.map(|d| (None, d)),
            "/api/v1/settings" => settings::answer(s, &mut rec, &self.board)
                .await
                .map(|d| (None, d)),
            "/api/v1/audit" => audit::answer(s, &mut rec, params.role.as_deref(), limit)
                .await
                .map(|d| (Some(s.database.clone()), d)),
            "/api/v1/top-queries" => top_queries::answer(self, s, &mut rec, limit)
                .await
                .map(|d| (None, d)),
            "/api/v1/storage" => storage::answer(self, s, &mut rec, params, limit)
                .await
                .map(|(db, d)| (Some(db), d)),
            "/api/v1/autovacuum" | "/api/v1/partitions" => {
                let (db, other) = session::database(s, &mut rec, self, params).await?;
                let c = other.as_ref().unwrap_or(&s.client);
                let data = if endpoint == "/api/v1/autovacuum" {
                    tables::autovacuum(s, c, &db, &mut rec, limit).await
                } else {
                    tables::partitions(c, &db, &mut rec, limit).await
                };
                data.map(|d| (Some(db), d))
            }
            _ => unreachable!("the router calls respond for PATHS only"),
        };
        if s.client.is_closed() {
            *guard = None;
        }
        result.map(|(db, data)| (db, data, rec.sql))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `query` as the router reads it: axum's `Query`, then [`Params`]' checks.
    fn parse(query: &str) -> Result<Params, ApiError> {
        let uri = format!("/api/v1/overview?{query}").parse().unwrap();
        axum::extract::Query::<QueryString>::try_from_uri(&uri)
            .map_err(|e| ApiError::BadParameter {
                name: "query",
                message: e.body_text(),
            })
            .and_then(|q| q.0.try_into())
    }

    #[test]
    fn parameters_parse_and_refuse_typos() {
        assert_eq!(parse("").unwrap(), Params::default());
        assert_eq!(
            parse("database=t%C3%A9nant&limit=5").unwrap(),
            Params {
                database: Some("ténant".into()),
                limit: Some(5),
                role: None,
            }
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "databse=app",
            "database=",
            "role=",
            "limit=5&limit=6",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad}: {e}");
        }
        let e = parse("limit=-3").unwrap_err();
        assert!(e.to_string().contains("1 to 1000"), "{e}");
        let e = parse("databse=app").unwrap_err();
        assert!(e.to_string().contains("\"databse\""), "{e}");
    }
}
