//! The cost worker: one tokio task that makes a generic plan for each new fingerprint.
//!
//! Safety rules (never negotiable):
//! - only what [`rewrite::costable`] accepts is sent: one SELECT/INSERT/UPDATE/DELETE/MERGE
//!   statement, never a utility statement, never a second statement;
//! - it is only planned, never executed: `EXPLAIN (GENERIC_PLAN, FORMAT JSON)` on
//!   PostgreSQL 16+ (docs, "EXPLAIN"), and on 15 `PREPARE` + `EXPLAIN EXECUTE` with every
//!   parameter NULL under `plan_cache_mode = force_generic_plan` (docs, section 19.7.5);
//! - inside `BEGIN READ ONLY … ROLLBACK`, with `statement_timeout` and `lock_timeout` set
//!   locally, in the query's database, after `SET LOCAL ROLE` to the role that sent it, so
//!   it sees no more than that role may; and with that role's configured `search_path`
//!   (`ALTER ROLE … SET search_path`, from `pg_db_role_setting`), since the session's own
//!   `SET search_path` is not visible on the wire before PostgreSQL 18;
//! - its sessions carry `application_name = 'pgmon'`, so they are not captured.

use std::{
    collections::HashMap,
    sync::{Arc, mpsc::Sender},
    time::Instant,
};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};

use super::{
    CostAnswer, CostConfig, CostMetrics, CostRequest, Costs,
    queue::Queue,
    rewrite::{self, Costable},
    store::{self, Store},
};

/// Why one estimate failed (the `reason` label).
fn reason_of(e: &tokio_postgres::Error) -> &'static str {
    let Some(db) = e.as_db_error() else {
        return "connection";
    };
    match db.code().code() {
        "42501" => "permission_denied",
        "42P18" => "indeterminate_parameter",
        "57014" => "statement_timeout",
        "55P03" => "lock_timeout",
        "42P01" | "42703" | "42883" | "42704" | "3F000" => "undefined_object",
        "42601" => "syntax_error",
        "3D000" => "no_such_database",
        "22023" | "42804" | "42725" => "parameter_type",
        c if c.starts_with("42") => "analysis_error",
        _ => "server_error",
    }
}

/// One worker session per database.
struct Session {
    client: Client,
    /// `server_version_num`.
    version: u32,
}

/// The worker.
pub struct Worker {
    base: crate::db::DbConfig,
    config: CostConfig,
    costs: Costs,
    metrics: CostMetrics,
    sessions: HashMap<Arc<str>, Session>,
}

impl Worker {
    /// A worker connecting with `base` (its `dbname` replaced per query).
    pub fn new(
        base: crate::db::DbConfig,
        config: CostConfig,
        costs: Costs,
        metrics: CostMetrics,
    ) -> Self {
        Self {
            base,
            config,
            costs,
            metrics,
            sessions: HashMap::new(),
        }
    }

    /// Serves requests until `requests` closes, most called first ([`Queue`]); each
    /// answer goes to `answers` (the capture thread) after the cache has it. With `store`,
    /// the estimates persisted by an earlier run are loaded first ([`store::load`]; the
    /// requests that arrive meanwhile wait and are then answered from the cache), and each
    /// new estimate is persisted.
    pub async fn serve(
        mut self,
        mut requests: UnboundedReceiver<CostRequest>,
        answers: Sender<CostAnswer>,
        store: Option<(Store, crate::db::DbConfig)>,
    ) {
        if let Some((_, monitor)) = &store {
            let started = Instant::now();
            let loaded = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                store::load(monitor, &self.base, &self.costs, &self.metrics),
            )
            .await;
            match loaded {
                Ok(Ok(l)) => tracing::info!(
                    kept = l.kept,
                    discarded_ddl = l.changed,
                    discarded_unreachable = l.unreachable,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "cost estimates restored from pgmon.cost_estimates"
                ),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "pgmon.cost_estimates unreadable (is sql/002_enforcement.sql up to date?); every fingerprint is estimated anew")
                }
                Err(_) => tracing::warn!(
                    "pgmon.cost_estimates: not loaded within 60 s; the rest is estimated anew"
                ),
            }
        }
        let store = store.map(|(s, _)| s);
        let mut queue = Queue::new(self.metrics.queue.clone());
        loop {
            if queue.is_empty() {
                match requests.recv().await {
                    Some(r) => queue.push(r, crate::util::now_ms()),
                    None => return,
                }
            }
            while let Ok(r) = requests.try_recv() {
                queue.push(r, crate::util::now_ms());
            }
            let Some(req) = queue.pop() else { continue };
            let cost = match self.costs.get(req.fingerprint) {
                // Restored, or answered while this request waited.
                Some(cost) => cost,
                None => {
                    let e = self.estimate(&req).await;
                    self.costs
                        .insert(req.fingerprint, e.cost, &req.database, &e.relations);
                    if let (Some(store), Some(cost), Some(signature)) =
                        (&store, e.cost, e.signature)
                    {
                        store.put(store::Estimate {
                            fingerprint: req.fingerprint,
                            database: req.database.clone(),
                            cost,
                            relations: e.relations.iter().map(|r| short(r).to_owned()).collect(),
                            signature,
                        });
                    }
                    self.metrics.entries.set(self.costs.entries() as i64);
                    e.cost
                }
            };
            queue.finished();
            let answer = CostAnswer {
                fingerprint: req.fingerprint,
                cost,
            };
            if answers.send(answer).is_err() {
                return;
            }
        }
    }

    /// The generic-plan total cost of `req`, or `None` (reason counted), with the
    /// relations the statement uses (empty when it was refused before parsing them) and,
    /// when it was planned, the signature of their catalog rows taken before the plan.
    pub async fn estimate(&mut self, req: &CostRequest) -> Estimated {
        let refused = |cost| Estimated {
            cost,
            relations: Vec::new(),
            signature: None,
        };
        if req.truncated {
            self.metrics.error(rewrite::Refusal::Truncated.as_str());
            return refused(None);
        }
        let costable = match rewrite::costable(&req.normalized) {
            Ok(c) => c,
            Err(rewrite::Refusal::Free) => return refused(Some(0.0)),
            Err(r) => {
                self.metrics.error(r.as_str());
                return refused(None);
            }
        };
        let (cost, signature) = self.estimate_costable(req, &costable).await;
        Estimated {
            cost,
            relations: costable.relations,
            signature,
        }
    }

    async fn estimate_costable(
        &mut self,
        req: &CostRequest,
        costable: &Costable,
    ) -> (Option<f64>, Option<i64>) {
        let started = Instant::now();
        let result = self.plan(req, costable).await;
        self.metrics
            .estimate_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok((cost, signature)) if cost.is_finite() => {
                self.metrics.estimated.inc();
                (Some(cost), Some(signature))
            }
            Ok(_) => {
                self.metrics.error("no_plan");
                (None, None)
            }
            Err(e) => {
                let reason = reason_of(&e);
                tracing::debug!(fingerprint = %crate::query::fingerprint_hex(req.fingerprint), role = %req.role, reason, error = %e, "not costed");
                if reason == "connection" {
                    self.sessions.remove(&req.database);
                }
                self.metrics.error(reason);
                (None, None)
            }
        }
    }

    async fn session(&mut self, database: &Arc<str>) -> Result<&Session, tokio_postgres::Error> {
        if self
            .sessions
            .get(database)
            .is_some_and(|s| s.client.is_closed())
        {
            self.sessions.remove(database);
        }
        if !self.sessions.contains_key(database) {
            let mut config = self.base.clone();
            config.dbname(database.as_ref());
            config.application_name("pgmon");
            let (client, connection) = config.open().await?;
            tokio::spawn(listen(
                connection,
                self.costs.clone(),
                database.clone(),
                self.metrics.invalidations.clone(),
            ));
            client
                .batch_execute(&format!("LISTEN {DDL_CHANNEL}"))
                .await?;
            let installed: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT FROM pg_event_trigger \
                     WHERE evtname = 'pgmon_ddl_end' AND evtenabled <> 'D')",
                    &[],
                )
                .await?
                .get(0);
            if !installed {
                tracing::warn!(
                    database = %database,
                    ttl_seconds = self.config.cache_ttl_seconds,
                    "sql/003_ddl_notify.sql is not installed here: cost estimates follow DDL only when they expire"
                );
            }
            let version = client
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await?
                .get::<_, i32>(0) as u32;
            self.sessions
                .insert(database.clone(), Session { client, version });
        }
        Ok(&self.sessions[database])
    }

    /// The plan's total cost and the [`store::signature`] of its relations, taken first.
    async fn plan(
        &mut self,
        req: &CostRequest,
        c: &Costable,
    ) -> Result<(f64, i64), tokio_postgres::Error> {
        let (statement_timeout, lock_timeout) = (
            self.config.statement_timeout_ms,
            self.config.lock_timeout_ms,
        );
        let s = self.session(&req.database).await?;
        let names: Vec<String> = c.relations.iter().map(|r| short(r).to_owned()).collect();
        let signature = store::signature(&names, &store::signatures(&s.client, &names).await?);
        let search_path = role_search_path(&s.client, &req.role)
            .await?
            .unwrap_or_else(|| "\"$user\", public".to_owned());
        let setup = Setup {
            statement_timeout,
            lock_timeout,
            search_path: &search_path,
            role: &req.role,
        };
        let first = if generic_plan_explain(s.version) {
            explain_generic(&s.client, &setup, &c.text).await
        } else {
            explain_prepared(&s.client, &setup, c, None).await
        };
        let cost = match first {
            // A parameter whose type PostgreSQL cannot infer (`SELECT $1`): declare them
            // all `text`, which is what an untyped literal would have been.
            Err(e) if reason_of(&e) == "indeterminate_parameter" => {
                explain_prepared(&s.client, &setup, c, Some("text")).await
            }
            other => other,
        }?;
        Ok((cost, signature))
    }
}

/// What [`Worker::estimate`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimated {
    /// Generic-plan total cost; `None`: not costable (the reason is counted).
    pub cost: Option<f64>,
    /// The relations the statement uses, as libpg_query names them.
    pub relations: Vec<String>,
    /// [`store::signature`] of those relations before the plan; `None` when no plan was
    /// made (nothing to persist).
    pub signature: Option<i64>,
}

/// `schema.name` → `name`.
fn short(r: &str) -> &str {
    r.rsplit('.').next().unwrap_or(r)
}

/// The channel `sql/003_ddl_notify.sql` notifies after DDL; the payload is a relation
/// name without schema, or `*`.
pub const DDL_CHANNEL: &str = "pgmon_ddl";

/// Drives one worker session's connection and acts on its DDL notifications: each makes
/// the cache forget the estimates that used the relation. When the session ends, DDL can
/// no longer be heard there, so every estimate made in that database is forgotten too;
/// the next request opens a new session, which listens again.
async fn listen<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    costs: Costs,
    database: Arc<str>,
    invalidations: prometheus_client::metrics::counter::Counter,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) if n.channel() == DDL_CHANNEL => {
                tracing::debug!(database = %database, relation = n.payload(), "DDL: forgetting its cost estimates");
                costs.forget_relation(&database, n.payload());
                invalidations.inc();
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    costs.forget_relation(&database, "*");
    invalidations.inc();
}

/// The transaction every estimate runs in.
struct Setup<'a> {
    statement_timeout: u64,
    lock_timeout: u64,
    /// A search_path value as stored by `ALTER ROLE … SET`: passed as a parameter of
    /// `set_config`, never spliced into SQL.
    search_path: &'a str,
    role: &'a str,
}

impl Setup<'_> {
    async fn begin(&self, client: &Client, generic: bool) -> Result<(), tokio_postgres::Error> {
        client
            .batch_execute(&format!(
                "BEGIN READ ONLY; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}{}",
                self.statement_timeout,
                self.lock_timeout,
                if generic {
                    ""
                } else {
                    "; SET LOCAL plan_cache_mode = force_generic_plan"
                }
            ))
            .await?;
        client
            .execute(
                "SELECT set_config('search_path', $1, true)",
                &[&self.search_path],
            )
            .await?;
        client
            .batch_execute(&format!("SET LOCAL ROLE {}", quote_ident(self.role)))
            .await
    }
}

/// Opens the read-only transaction, runs `body` (simple protocol), and always rolls back.
async fn in_read_only(
    client: &Client,
    setup: &Setup<'_>,
    generic: bool,
    body: &str,
) -> Result<f64, tokio_postgres::Error> {
    let result = async {
        setup.begin(client, generic).await?;
        let messages = client.simple_query(body).await?;
        Ok(total_cost(&messages))
    }
    .await;
    // Whatever happened, end the transaction (a no-op warning if none is open).
    client.batch_execute("ROLLBACK").await?;
    result
}

async fn explain_generic(
    client: &Client,
    setup: &Setup<'_>,
    text: &str,
) -> Result<f64, tokio_postgres::Error> {
    // The newline ends a trailing `--` comment inside `text`.
    let body = format!("EXPLAIN (GENERIC_PLAN, FORMAT JSON) {text}\n");
    in_read_only(client, setup, true, &body).await
}

async fn explain_prepared(
    client: &Client,
    setup: &Setup<'_>,
    c: &Costable,
    param_type: Option<&str>,
) -> Result<f64, tokio_postgres::Error> {
    let types = match param_type {
        Some(t) if c.params > 0 => format!("({})", vec![t; c.params].join(", ")),
        _ => String::new(),
    };
    let args = if c.params > 0 {
        format!("({})", vec!["NULL"; c.params].join(", "))
    } else {
        String::new()
    };
    let body = format!(
        "PREPARE pgmon_cost{types} AS {}\n; EXPLAIN (FORMAT JSON) EXECUTE pgmon_cost{args}",
        c.text
    );
    let result = in_read_only(client, setup, false, &body).await;
    // PREPARE is not transactional: the statement outlives the ROLLBACK.
    client.batch_execute("DEALLOCATE ALL").await?;
    result
}

/// The `Total Cost` of the top plan node in EXPLAIN's JSON (docs, "EXPLAIN", FORMAT JSON).
fn total_cost(messages: &[SimpleQueryMessage]) -> f64 {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .filter_map(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .filter_map(|v| v[0]["Plan"]["Total Cost"].as_f64())
        .next_back()
        .unwrap_or(f64::NAN)
}

/// The role's own `search_path` setting (database-specific first), as SQL text, if any.
async fn role_search_path(
    client: &Client,
    role: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT substr(c, length('search_path=') + 1) \
             FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole, \
                  unnest(s.setconfig) AS c \
             WHERE r.rolname = $1 AND c LIKE 'search_path=%' \
               AND s.setdatabase IN (0, (SELECT oid FROM pg_database \
                                         WHERE datname = current_database())) \
             ORDER BY s.setdatabase DESC LIMIT 1",
            &[&role],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, String>(0)))
}

/// True when the server (`server_version_num`) has `EXPLAIN (GENERIC_PLAN)` (PostgreSQL
/// 16+; docs, "EXPLAIN"); before, the same cost comes from a prepared statement under
/// `plan_cache_mode = force_generic_plan` (PostgreSQL 12+), so every version from 13 on
/// gets an estimate.
fn generic_plan_explain(version: u32) -> bool {
    version >= crate::db::PG16
}

/// `"name"` with embedded quotes doubled (docs, section 4.1.1 "Identifiers and Key Words").
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("alice"), "\"alice\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn generic_plan_explain_from_16_on() {
        let by_version: Vec<bool> = [130_023, 140_023, 150_014, 160_000, 170_010, 180_004]
            .into_iter()
            .map(generic_plan_explain)
            .collect();
        assert_eq!(by_version, [false, false, false, true, true, true]);
    }
}
