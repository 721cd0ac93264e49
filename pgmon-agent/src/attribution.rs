//! Attribution of connections whose StartupMessage the agent did not see (opened before it
//! started): pid → role and database from `pg_stat_activity` (PostgreSQL docs, section
//! 27.2.3 "pg_stat_activity") over the monitor connection.
//!
//! Runs on the tokio runtime. The capture thread sends pids; answers go back on a std
//! channel that the capture thread polls between drains. A lost connection is reopened
//! with exponential backoff (0.5 s doubling to 30 s, with jitter), and every pid asked
//! while it was down is asked again: nothing is answered "unknown" because the database
//! was away.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_postgres::Client;

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

const LOOKUP_SQL: &str = "SELECT pid, usename::text, datname::text, application_name \
     FROM pg_stat_activity WHERE pid = ANY($1) AND usename IS NOT NULL";

/// Serves lookups until `requests` closes; failed connection attempts are counted in
/// `connect_errors` (`pgmon_db_connect_errors_total`).
pub async fn serve(
    config: crate::db::DbConfig,
    mut requests: mpsc::UnboundedReceiver<u32>,
    answers: std::sync::mpsc::Sender<Answer>,
    connect_errors: Counter,
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
                    crate::db::connect_with_backoff(&config, "monitor", Some(&connect_errors)).await
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
