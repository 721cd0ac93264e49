//! Attribution of connections whose StartupMessage the agent did not see (opened before it
//! started): pid → role and database from `pg_stat_activity` (PostgreSQL docs, section
//! 27.2.3 "pg_stat_activity") over the monitor connection.
//!
//! Runs on the tokio runtime. The capture thread sends pids; answers go back on a std
//! channel that the capture thread polls between drains. A lost connection is reopened
//! with exponential backoff (0.5 s doubling to 30 s, with jitter), and every pid asked
//! while it was down is asked again: nothing is answered "unknown" because the database
//! was away.

use std::{str::FromStr, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

use crate::metrics::Metrics;

/// Who a backend belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub role: String,
    pub database: String,
    pub application_name: String,
}

/// The answer for one pid: `None` when `pg_stat_activity` has no client backend with
/// that pid (it ended, or is not a client backend).
#[derive(Clone, Debug)]
pub struct Answer {
    pub pid: u32,
    pub identity: Option<Identity>,
}

/// Errors of the monitor connection.
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    /// `cluster.connection` is not a valid connection string.
    #[error("cluster.connection is not a valid libpq connection string")]
    BadConnectionString(#[source] tokio_postgres::Error),
    /// Connecting or querying failed.
    #[error("monitor connection")]
    Db(#[from] tokio_postgres::Error),
}

/// Parses `conninfo` and forces `application_name = 'pgmon'`, which keeps the agent's own
/// sessions out of the captured traffic.
pub fn monitor_config(conninfo: &str) -> Result<tokio_postgres::Config, AttributionError> {
    let mut config = tokio_postgres::Config::from_str(conninfo)
        .map_err(AttributionError::BadConnectionString)?;
    config.application_name("pgmon");
    config.connect_timeout(Duration::from_secs(5));
    Ok(config)
}

/// Opens one session with `config` (its connection task spawned on the runtime).
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, AttributionError> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "monitor connection ended");
        }
    });
    Ok(client)
}

/// [`connect`], retried with exponential backoff (0.5 s doubling to 30 s, with jitter)
/// until it succeeds; each failure is logged as `what` connection failed.
pub async fn connect_with_backoff(config: &tokio_postgres::Config, what: &'static str) -> Client {
    use backon::{ExponentialBuilder, Retryable};
    let connect_once = || connect(config);
    let retried = connect_once
        .retry(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .without_max_times(),
        )
        .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "{what} connection failed"))
        .await;
    retried.expect("retries without limit")
}

/// True when `e` says pgmon's schema is not there or not for this role: SQLSTATE 42P01
/// (undefined_table), 3F000 (invalid_schema_name) or 42501 (insufficient_privilege)
/// (PostgreSQL docs, Appendix A). Retrying will not help; installing sql/ will.
pub fn schema_missing(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        [
            SqlState::UNDEFINED_TABLE,
            SqlState::INVALID_SCHEMA_NAME,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ]
        .contains(c)
    })
}

const LOOKUP_SQL: &str = "SELECT pid, usename::text, datname::text, application_name \
     FROM pg_stat_activity WHERE pid = ANY($1) AND usename IS NOT NULL";

/// Serves lookups until `requests` closes.
pub async fn serve(
    config: tokio_postgres::Config,
    mut requests: mpsc::UnboundedReceiver<u32>,
    answers: std::sync::mpsc::Sender<Answer>,
    metrics: Arc<Metrics>,
) {
    let mut client: Option<Client> = None;
    while let Some(first) = requests.recv().await {
        // Batch what arrives together (a reconnecting pool opens many sessions at once).
        let mut pids = vec![first as i32];
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(p) = requests.try_recv() {
            pids.push(p as i32);
        }
        pids.sort_unstable();
        pids.dedup();
        loop {
            let c = match client.take() {
                Some(c) if !c.is_closed() => c,
                _ => {
                    let m = metrics.clone();
                    let connect_once = || connect(&config);
                    match connect_once
                        .retry(
                            ExponentialBuilder::new()
                                .with_min_delay(Duration::from_millis(500))
                                .with_max_delay(Duration::from_secs(30))
                                .with_jitter()
                                .without_max_times(),
                        )
                        .notify(move |e, wait| {
                            m.db_connect_errors.inc();
                            tracing::warn!(error = %crate::capture::error_chain(e), retry_in = ?wait, "monitor connection failed");
                        })
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(error = %crate::capture::error_chain(&e), "monitor connection: giving up");
                            return;
                        }
                    }
                }
            };
            match c.query(LOOKUP_SQL, &[&pids]).await {
                Ok(rows) => {
                    let mut found = std::collections::HashMap::new();
                    for row in rows {
                        let pid: i32 = row.get(0);
                        let id = Identity {
                            role: row.get::<_, Option<String>>(1).unwrap_or_default(),
                            database: row.get::<_, Option<String>>(2).unwrap_or_default(),
                            application_name: row.get::<_, Option<String>>(3).unwrap_or_default(),
                        };
                        found.insert(pid, id);
                    }
                    for pid in &pids {
                        let identity = found.remove(pid);
                        if answers
                            .send(Answer {
                                pid: *pid as u32,
                                identity,
                            })
                            .is_err()
                        {
                            return; // the capture thread is gone: shutting down
                        }
                    }
                    client = Some(c);
                    break;
                }
                Err(e) => {
                    // Connection lost mid-query: reconnect (with backoff) and ask again.
                    tracing::warn!(error = %e, "pg_stat_activity lookup failed; reconnecting");
                    drop(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_is_forced() {
        let c = monitor_config("host=/tmp port=5432 user=x application_name=other").unwrap();
        assert_eq!(c.get_application_name(), Some("pgmon"));
        assert!(monitor_config("host='unterminated").is_err());
    }
}
