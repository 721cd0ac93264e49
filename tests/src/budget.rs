//! Helpers of the query-cost budget tests: pgmon's SQL installed in a cluster, a role with a
//! table that makes a costly query, the agent's config with a `budgets:` section, and
//! readings of what the agent did (its status, `pgmon.audit`, `pg_roles`).
//!
//! Like the tests that call them, these panic with context instead of returning errors.

use std::thread;
use std::time::{Duration, Instant};

use crate::{Agent, Cluster, SUPERUSER_MONITOR, Transport, quote_ident, quote_literal};

/// A query whose generic plan is a sequential scan of `big` (100 000 rows, see
/// [`create_big_table`]): a planner cost in the thousands per execution.
pub const HEAVY_SQL: &str = "SELECT count(*) FROM big WHERE g > 5";

/// Runs `sql/001_roles.sql` and `sql/002_enforcement.sql` as `postgres` in database
/// `postgres` (where the agent's config connects).
pub fn install_sql(cluster: &Cluster) {
    for file in ["sql/001_roles.sql", "sql/002_enforcement.sql"] {
        cluster
            .run_sql_file("postgres", file)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// Creates table `big` (100 000 rows, analyzed) owned by `role` in its database `role`
/// (e.g. made by [`Cluster::create_role_with_db`]), for [`HEAVY_SQL`].
pub fn create_big_table(cluster: &Cluster, role: &str) {
    cluster
        .psql(
            role,
            role,
            Transport::Unix,
            "CREATE TABLE big AS SELECT generate_series(1, 100000) AS g; ANALYZE big",
        )
        .unwrap_or_else(|e| panic!("table big for {role}: {e:#}"));
}

/// An agent config for `cluster` (monitor connection as `postgres` over the unix socket,
/// so with [`SUPERUSER_MONITOR`]'s `security:` section; metrics on `127.0.0.1:port`)
/// followed by `budgets`, the `budgets:` section verbatim (starting with the line
/// `budgets:`).
pub fn agent_config(cluster: &Cluster, port: u16, budgets: &str) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"host={} port={} user=postgres dbname=postgres\"\n\
         metrics:\n  listen: 127.0.0.1:{port}\n{SUPERUSER_MONITOR}{budgets}",
        cluster.data_dir().display(),
        cluster.socket_dir().display(),
        cluster.port()
    )
}

/// `role`'s entry of `budgets` in the agent's status (`None` when the role has no budget
/// or the status is unreadable).
pub fn budget(agent: &Agent, role: &str) -> Option<serde_json::Value> {
    let s = agent.status_json().ok()?;
    s["budgets"]
        .as_array()?
        .iter()
        .find(|b| b["role"] == role)
        .cloned()
}

/// Polls `f` every 100 ms until it returns true; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {within:?} waiting for {what}");
}

/// `role`'s rows of `pgmon.audit`, oldest first, each as `action:word` where `word` is the
/// first word of the result (`warn:logged`, `lock:applied`, `lock:observed`,
/// `restore:refused`, …).
pub fn audit(cluster: &Cluster, role: &str) -> Vec<String> {
    cluster
        .psql_admin(&format!(
            "SELECT action || ':' || substring(result FROM '^[a-z]+') FROM pgmon.audit \
             WHERE role = {} ORDER BY id",
            quote_literal(role)
        ))
        .expect("audit")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `rolcanlogin,rolconnlimit` of `role` in `pg_roles`, e.g. `true,-1` or `false,7`.
pub fn role_flags(cluster: &Cluster, role: &str) -> String {
    cluster
        .query_value(
            "postgres",
            "postgres",
            &format!(
                "SELECT rolcanlogin || ',' || rolconnlimit FROM pg_roles WHERE rolname = {}",
                quote_literal(role)
            ),
        )
        .expect("pg_roles")
}

/// Rows of `pgmon.role_original` (settings pgmon took away and has not yet restored).
pub fn saved_originals(cluster: &Cluster) -> u64 {
    cluster
        .query_value(
            "postgres",
            "postgres",
            "SELECT count(*) FROM pgmon.role_original",
        )
        .expect("pgmon.role_original")
        .parse()
        .expect("count")
}

/// `ALTER ROLE role CONNECTION LIMIT limit`.
pub fn set_connection_limit(cluster: &Cluster, role: &str, limit: i32) {
    cluster
        .psql_admin(&format!(
            "ALTER ROLE {} CONNECTION LIMIT {limit}",
            quote_ident(role)
        ))
        .expect("connection limit");
}
