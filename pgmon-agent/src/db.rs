//! The one way pgmon's tasks open a session of the monitored cluster: a parsed
//! `cluster.connection` with `application_name = 'pgmon'` (so the agent's own sessions are
//! never captured), one connect, and one backoff policy for retrying it (0.5 s doubling to
//! 30 s, with jitter, forever: a database that comes back is always reached again).

use std::{str::FromStr, time::Duration};

use backon::{ExponentialBackoff, ExponentialBuilder, Retryable};
use prometheus_client::metrics::counter::Counter;
use tokio_postgres::{Client, NoTls};

/// `server_version_num` of PostgreSQL 14: `pg_locks.waitstart`, `pg_stat_wal`,
/// `pg_stat_statements_info`. The loops work from 13 on; each statement that reads a newer
/// view or column is chosen by the server's version, and what an older server cannot tell
/// is left out of the scrape rather than exported as a made-up zero.
pub const PG14: u32 = 140_000;
/// `server_version_num` of PostgreSQL 16: `pg_stat_io`, `EXPLAIN (GENERIC_PLAN)`.
pub const PG16: u32 = 160_000;
/// `server_version_num` of PostgreSQL 17: `pg_stat_checkpointer` (and `pg_stat_bgwriter`
/// without its checkpoint columns).
pub const PG17: u32 = 170_000;
/// `server_version_num` of PostgreSQL 18: `pg_stat_io` counts bytes (`read_bytes`, …)
/// instead of operations × `op_bytes`.
pub const PG18: u32 = 180_000;

/// Errors of a monitor session.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `cluster.connection` is not a valid connection string.
    #[error("cluster.connection is not a valid libpq connection string")]
    BadConnectionString(#[source] tokio_postgres::Error),
    /// Connecting or querying failed.
    #[error("monitor connection")]
    Db(#[from] tokio_postgres::Error),
}

/// Parses `conninfo` and forces `application_name = 'pgmon'`, which keeps the agent's own
/// sessions out of the captured traffic; connecting times out after 5 s.
pub fn monitor_config(conninfo: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut config =
        tokio_postgres::Config::from_str(conninfo).map_err(DbError::BadConnectionString)?;
    config.application_name("pgmon");
    config.connect_timeout(Duration::from_secs(5));
    Ok(config)
}

/// Opens one session with `config` (its connection task spawned on the runtime).
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, DbError> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "monitor connection ended");
        }
    });
    Ok(client)
}

/// The delays between attempts: 0.5 s doubling to 30 s, with jitter, without end. Start a
/// new one after a session that worked, so the next outage starts again at 0.5 s.
pub fn backoff() -> ExponentialBackoff {
    use backon::BackoffBuilder as _;
    policy().build()
}

fn policy() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
}

/// [`connect`], retried with [`backoff`] until it succeeds; each failure is logged as
/// "`what`: connection failed" and counted in `errors` when given.
pub async fn connect_with_backoff(
    config: &tokio_postgres::Config,
    what: &'static str,
    errors: Option<&Counter>,
) -> Client {
    let connect_once = || connect(config);
    let retried = connect_once
        .retry(policy())
        .notify(|e, wait| {
            if let Some(c) = errors {
                c.inc();
            }
            tracing::warn!(error = %crate::util::error_chain(e), retry_in = ?wait, "{what}: connection failed");
        })
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

#[cfg(test)]
mod tests {
    #[test]
    fn application_name_is_forced() {
        let c = super::monitor_config("host=/tmp port=5432 user=x application_name=other").unwrap();
        assert_eq!(c.get_application_name(), Some("pgmon"));
        assert!(super::monitor_config("host='unterminated").is_err());
    }

    #[test]
    fn the_backoff_doubles_to_30_s_and_never_ends() {
        let delays: Vec<_> = super::backoff().take(12).collect();
        assert_eq!(delays.len(), 12);
        assert!(delays[0] >= std::time::Duration::from_millis(500));
        assert!(
            delays[11] <= std::time::Duration::from_secs(60),
            "{delays:?}"
        );
        assert!(
            delays[11] >= std::time::Duration::from_secs(30),
            "{delays:?}"
        );
    }
}
