//! The one way pgmon's tasks open a session of the monitored cluster: a parsed
//! `cluster.connection` with `application_name = 'pgmon'` (so the agent's own sessions are
//! never captured), one connect, and one backoff policy for retrying it (0.5 s doubling to
//! 30 s, with jitter, forever: a database that comes back is always reached again).

pub mod conninfo;
mod tls;

use std::{
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use backon::{ExponentialBackoff, ExponentialBuilder, Retryable};
use prometheus_client::metrics::counter::Counter;
use tokio_postgres::{Client, Socket, config::Host, tls::MakeTlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

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
    /// A keyword pgmon reads itself (`sslmode`, `sslrootcert`, `passfile`) is wrong, or
    /// the TLS settings it names cannot be used (an unreadable `sslrootcert`).
    #[error("connection string: {0}")]
    BadSetting(String),
    /// Connecting or querying failed.
    #[error("monitor connection")]
    Db(#[from] tokio_postgres::Error),
}

/// A session's connection task, as [`DbConfig::open`] returns it (TLS or not).
pub type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// How the agent reaches the cluster: a parsed connection string (it derefs to
/// `tokio_postgres::Config`, so a task may change the database or the role), the TLS its
/// `sslmode` asks for, and where the password comes from when the string has none.
#[derive(Clone)]
pub struct DbConfig {
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// `cluster.password_file`: the whole file, trimmed, is the password.
    password_file: Option<PathBuf>,
    /// libpq's password file (`passfile`, `PGPASSFILE`, `~/.pgpass`), read at each connect.
    passfile: Option<PathBuf>,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("pg", &self.pg)
            .field("password_file", &self.password_file)
            .finish_non_exhaustive()
    }
}

impl Deref for DbConfig {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &tokio_postgres::Config {
        &self.pg
    }
}

impl DerefMut for DbConfig {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.pg
    }
}

/// Parses `conninfo` (libpq keyword/value or URI, PostgreSQL docs 34.1.1) and forces
/// `application_name = 'pgmon'`, which keeps the agent's own sessions out of the captured
/// traffic; connecting times out after 5 s. `sslmode` is libpq's (default `prefer`;
/// `verify-ca`/`verify-full` check the server against `sslrootcert`); Unix-socket
/// sessions never use TLS, as in libpq. A password missing from the string is looked up
/// at each connect in libpq's password file (34.16).
pub fn monitor_config(conninfo: &str) -> Result<DbConfig, DbError> {
    let split = conninfo::split(conninfo).map_err(DbError::BadSetting)?;
    let mut pg =
        tokio_postgres::Config::from_str(&split.rest).map_err(DbError::BadConnectionString)?;
    pg.application_name("pgmon");
    pg.connect_timeout(Duration::from_secs(5));
    // (A string with only `hostaddr` is TCP: never read as sockets-only.)
    let hosts = pg.get_hosts();
    let only_sockets = !hosts.is_empty() && hosts.iter().all(|h| !matches!(h, Host::Tcp(_)));
    pg.ssl_mode(match split.ssl_mode {
        _ if only_sockets => tokio_postgres::config::SslMode::Disable,
        conninfo::SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        conninfo::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let tls = if only_sockets {
        tls::client_config(conninfo::SslMode::Prefer, None)
    } else {
        tls::client_config(split.ssl_mode, split.ssl_root_cert.as_deref())
    }
    .map_err(DbError::BadSetting)?;
    Ok(DbConfig {
        pg,
        tls: MakeRustlsConnect::new(tls),
        password_file: None,
        passfile: conninfo::passfile_path(split.passfile.as_deref()),
    })
}

impl DbConfig {
    /// The same, with the password read from `path` (the whole file, a trailing newline
    /// aside) at each connect when the connection string has none.
    pub fn with_password_file(mut self, path: Option<PathBuf>) -> Self {
        self.password_file = path;
        self
    }

    /// Connects: TLS as `sslmode` asks, the password from the string, else
    /// `cluster.password_file`, else the first matching line of libpq's password file
    /// (ignored, with a warning, when group or others may read it, as libpq does). An
    /// unreadable `cluster.password_file` is logged and the attempt made without a
    /// password, so the server's refusal is the error.
    pub async fn open(&self) -> Result<(Client, Connection), tokio_postgres::Error> {
        if self.pg.get_password().is_some()
            || (self.password_file.is_none() && self.passfile.is_none())
        {
            return self.pg.connect(self.tls.clone()).await;
        }
        let mut pg = self.pg.clone();
        if let Some(path) = &self.password_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    pg.password(text.trim_end_matches(['\r', '\n']));
                }
                Err(e) => tracing::warn!(
                    file = %path.display(), error = %e,
                    "cluster.password_file cannot be read: connecting without a password"
                ),
            }
        } else if let Some(password) = self.passfile.as_deref().and_then(|p| self.pgpass(p)) {
            pg.password(password);
        }
        pg.connect(self.tls.clone()).await
    }

    fn pgpass(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).ok()?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "password file has group or world access; permissions should be u=rw (0600) or less: ignored"
            );
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        let host = match self.pg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        let user = self.pg.get_user().unwrap_or_default();
        let dbname = self.pg.get_dbname().unwrap_or(user);
        conninfo::pgpass_lookup(&text, &host, port, dbname, user)
    }
}

/// Opens one session with `config` (its connection task spawned on the runtime).
pub async fn connect(config: &DbConfig) -> Result<Client, DbError> {
    let (client, connection) = config.open().await?;
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
    config: &DbConfig,
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
    fn tls_follows_sslmode_and_never_unix_sockets() {
        use tokio_postgres::config::SslMode;
        let mode = |s: &str| super::monitor_config(s).unwrap().get_ssl_mode();
        assert_eq!(mode("host=db user=x"), SslMode::Prefer, "libpq's default");
        assert_eq!(mode("host=db user=x sslmode=disable"), SslMode::Disable);
        assert_eq!(
            mode("hostaddr=127.0.0.1 user=x sslmode=require"),
            SslMode::Require
        );
        assert_eq!(
            mode("host=/var/run/postgresql user=x sslmode=require"),
            SslMode::Disable
        );
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
