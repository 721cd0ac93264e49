//! Helpers shared by the storage quota tests (`storage.rs`, `storage_restart.rs`).

#![allow(dead_code, reason = "each test file uses a part")]

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, Transport, quote_ident, quote_literal,
};

/// Runs the sql/ files in database `db` as the superuser.
pub fn install(cluster: &Cluster, db: &str, files: &[&str]) {
    for file in files {
        cluster
            .run_sql_file(db, file)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// A cluster with pgmon's storage SQL installed, the role `slow`, and the database
/// `tenants` (also with the storage SQL) that `slow` may create tables in.
pub fn slow_tenant_cluster(version: PgVersion) -> Cluster {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    install(&cluster, "postgres", &pgmon_tests::STORAGE_MONITOR_SQL);
    role(&cluster, "slow", "");
    database(&cluster, "tenants");
    install(&cluster, "tenants", &pgmon_tests::STORAGE_TENANT_SQL);
    cluster
}

/// Runs `sql` as `user` in `db`; panics with psql's error.
pub fn sql(cluster: &Cluster, user: &str, db: &str, sql: &str) -> String {
    cluster
        .psql(user, db, Transport::Unix, sql)
        .unwrap_or_else(|e| panic!("{user}@{db}: {sql}: {e:#}"))
}

/// Creates a LOGIN role (`extra` appended: `SUPERUSER`, …).
pub fn role(cluster: &Cluster, name: &str, extra: &str) {
    sql(
        cluster,
        "postgres",
        "postgres",
        &format!("CREATE ROLE {} LOGIN {extra}", quote_ident(name)),
    );
}

/// A database whose public schema every role may create in.
pub fn database(cluster: &Cluster, name: &str) {
    sql(
        cluster,
        "postgres",
        "postgres",
        &format!("CREATE DATABASE {}", quote_ident(name)),
    );
    sql(
        cluster,
        "postgres",
        name,
        "GRANT CREATE ON SCHEMA public TO PUBLIC",
    );
}

/// What the server says `role` owns in `db`: pg_total_relation_size of its tables,
/// materialized views and sequences (TOAST and indexes included).
pub fn server_usage(cluster: &Cluster, db: &str, role: &str) -> u64 {
    sql(
        cluster,
        "postgres",
        db,
        &format!(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c \
             WHERE c.relowner = {}::regrole AND c.relkind IN ('r', 'm', 'S')",
            quote_literal(&quote_ident(role))
        ),
    )
    .trim()
    .parse()
    .expect("a number")
}

/// The role's entry in the agent's storage status.
pub fn storage_role(agent: &Agent, role: &str) -> Option<serde_json::Value> {
    let s = agent.status_json().ok()?;
    s["storage"]["roles"]
        .as_array()?
        .iter()
        .find(|r| r["role"] == role)
        .cloned()
}

/// The role's state in the agent (`ok`, `soft`, `hard`, `locked`), `-` when absent.
pub fn state(agent: &Agent, role: &str) -> String {
    storage_role(agent, role)
        .and_then(|r| r["state"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".into())
}

/// Polls `f` every 100 ms for `within`.
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

/// pg_roles.rolcanlogin.
pub fn can_login(cluster: &Cluster, role: &str) -> bool {
    sql(
        cluster,
        "postgres",
        "postgres",
        &format!(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = {}",
            quote_literal(role)
        ),
    )
    .trim()
        == "t"
}

/// Client backends of `role` (pg_stat_activity).
pub fn sessions(cluster: &Cluster, role: &str) -> u64 {
    sql(
        cluster,
        "postgres",
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = {} \
             AND backend_type = 'client backend'",
            quote_literal(role)
        ),
    )
    .trim()
    .parse()
    .expect("count")
}

/// The storage audit rows of `role`: `step:action:result-head`, oldest first.
pub fn audit(cluster: &Cluster, role: &str) -> Vec<String> {
    sql(
        cluster,
        "postgres",
        "postgres",
        &format!(
            "SELECT step || ':' || action || ':' || split_part(result, ':', 1) FROM pgmon.audit \
             WHERE source = 'storage' AND role = {} ORDER BY id",
            quote_literal(role)
        ),
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Writes a file of `mb` MiB of 1000-character lines for `\copy … FROM`, readable by psql.
pub fn copy_file(dir: &Path, name: &str, mb: usize) -> std::path::PathBuf {
    let line = format!("{}\n", "x".repeat(1000));
    let path = dir.join(name);
    std::fs::write(&path, line.repeat(mb * 1024 * 1024 / line.len())).expect("copy file");
    path
}

/// The agent's policy: pgmon's own role as the monitor connection, short timers.
pub fn config(cluster: &Cluster, port: u16, roles: &str) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"host={} port={} user=pgmon dbname=postgres\"\n\
         metrics:\n  listen: 127.0.0.1:{port}\n\
         storage:\n  enabled: true\n  mode: enterprise_db\n  usage_ttl_seconds: 0.2\n\
         \x20 recount_interval_seconds: 2\n  refresh_interval_seconds: 1\n\
         \x20 hard_grace_period: 3\n  unlock_grace_period: 3\n\
         \x20 exempt: [exempt_me]\n  roles:\n{roles}",
        cluster.data_dir().display(),
        cluster.socket_dir().display(),
        cluster.port()
    )
}
