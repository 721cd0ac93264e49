//! What cleanup reads each round: the client backends of `pg_stat_activity` it may act on,
//! chosen by the server's version (the lock-wait age needs `pg_locks.waitstart`, 14+).

use std::time::SystemTime;

use tokio_postgres::Client;

/// One client backend as `pg_stat_activity` showed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub pid: i32,
    pub role: String,
    pub state: String,
    pub backend_start: SystemTime,
    pub state_change: Option<SystemTime>,
    pub query_start: Option<SystemTime>,
    /// Seconds in the current state.
    pub state_age: f64,
    /// Seconds since the current (or last) statement started.
    pub query_age: f64,
    pub blockers: Vec<i32>,
    /// Seconds this session has waited for a lock (0 when not waiting); `None` where the
    /// server cannot tell (PostgreSQL 13).
    pub lock_wait: Option<f64>,
}

/// Client backends of roles cleanup may act on, with their ages, blockers and lock-wait
/// age (`pg_stat_activity`, `pg_locks`: PostgreSQL docs, sections 27.2.3 and 54.12); the
/// lock-wait column is the argument.
macro_rules! sessions_sql {
    ($lock_wait:literal) => {
        concat!(
            "SELECT a.pid, a.usename::text, coalesce(a.state, ''), a.backend_start, \
             a.state_change, a.query_start, \
             coalesce(extract(epoch FROM now() - a.state_change), 0)::float8, \
             coalesce(extract(epoch FROM now() - a.query_start), 0)::float8, \
             pg_blocking_pids(a.pid), ",
            $lock_wait,
            " FROM pg_stat_activity a JOIN pg_roles r ON r.rolname = a.usename \
             WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() \
               AND NOT r.rolsuper AND NOT r.rolreplication"
        )
    };
}

/// The sessions of PostgreSQL 14+, with the age of the oldest lock each awaits
/// (`pg_locks.waitstart`).
const SESSIONS: &str = sessions_sql!(
    "coalesce(extract(epoch FROM now() - (SELECT min(l.waitstart) FROM pg_locks l \
     WHERE l.pid = a.pid AND NOT l.granted)), 0)::float8"
);

/// [`SESSIONS`] for PostgreSQL 13: the lock-wait age is NULL (no `pg_locks.waitstart`).
const SESSIONS_13: &str = sessions_sql!("NULL::float8");

/// The sessions statement for the server `version` (`server_version_num`).
pub(super) fn sessions_sql(version: u32) -> &'static str {
    if crate::health::fast::lock_wait_known(version) {
        SESSIONS
    } else {
        SESSIONS_13
    }
}

/// The server's `server_version_num`.
pub(super) async fn server_version(client: &Client) -> Result<u32, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get::<_, i32>(0) as u32)
}

pub(super) async fn sessions(
    client: &Client,
    version: u32,
) -> Result<Vec<Session>, tokio_postgres::Error> {
    Ok(client
        .query(sessions_sql(version), &[])
        .await?
        .iter()
        .map(|r| Session {
            pid: r.get(0),
            role: r.get(1),
            state: r.get(2),
            backend_start: r.get(3),
            state_change: r.get(4),
            query_start: r.get(5),
            state_age: r.get(6),
            query_age: r.get(7),
            blockers: r.get(8),
            lock_wait: r.get(9),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_wait_age_is_read_from_14_on() {
        assert_eq!(sessions_sql(130_023), SESSIONS_13);
        assert!(!SESSIONS_13.contains("waitstart"));
        for v in [140_000, 150_014, 160_014, 170_010, 180_004] {
            assert_eq!(sessions_sql(v), SESSIONS, "{v}");
        }
    }
}
