//! Privileged test of the maintenance checks, with the real agent on PostgreSQL 15 and 18:
//!
//! - partitions: a table range-partitioned by month whose newest partition ends in two
//!   days fires `PostgresPartitionMissing` (warning), one whose partitions all ended fires
//!   it critical; creating the next months resolves both. A partition older than the
//!   retention fires `PostgresPartitionPastRetention`; dropping it resolves it;
//! - bloat: a table of 20 MB with 80 % of its rows deleted and vacuumed (the pages stay)
//!   is estimated at ≥ 60 % bloat from `pg_stats`, and `PostgresTableBloat` fires; with
//!   `pgstattuple` installed the same table is measured by `pgstattuple_approx`;
//!   `VACUUM FULL` resolves it;
//! - configuration drift: `ALTER SYSTEM SET work_mem` and a reload fire
//!   `PostgresSettingChanged` for `work_mem`; `ALTER SYSTEM SET shared_buffers` and a
//!   reload fire `PostgresPendingRestart` for `shared_buffers`; resetting it resolves it;
//! - the API carries each (`/api/v1/partitions` `time_ranges`, `/api/v1/autovacuum`
//!   `bloat`, `/api/v1/settings`) with its SQL.

use std::time::Duration;

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, FAST_HEALTH_LOOPS, PgVersion, SUPERUSER_MONITOR, Transport,
    agent_binary, free_port, require_root,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(40);

fn config(cluster: &Cluster, port: u16) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\nmetrics:\n  listen: 127.0.0.1:{port}\n\
         {SUPERUSER_MONITOR}{FAST_HEALTH_LOOPS}alerts:\n  evaluation_interval_seconds: 1\n  \
         partition_retention_seconds: {{warn: 31536000, crit: 63072000}}\n  \
         table_bloat: {{ratio: 0.5, min_bytes: 1000000}}\n",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Unix),
    )
}

fn wait_until(what: &str, f: impl FnMut() -> bool) {
    pgmon_tests::budget::wait_until(what, WAIT, f);
}

/// `GET path` as JSON, checking that the statement `sql` is among its SQL.
fn api(agent: &Agent, path: &str, sql: &str) -> Value {
    let (code, body) = agent.get(path).expect("GET");
    assert_eq!(code, 200, "{path}: {body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        v["sql"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == sql)),
        "{path}: no {sql} statement: {v:#}"
    );
    v
}

fn partitions(cluster: &Cluster, agent: &Agent, version: PgVersion) {
    cluster
        .psql_admin(
            "CREATE TABLE events (at timestamptz NOT NULL, body text) PARTITION BY RANGE (at); \
             CREATE TABLE events_old PARTITION OF events \
               FOR VALUES FROM (now() - interval '500 days') TO (now() - interval '400 days'); \
             CREATE TABLE events_now PARTITION OF events \
               FOR VALUES FROM (now() - interval '400 days') TO (now() + interval '2 days'); \
             CREATE TABLE gone (day date NOT NULL) PARTITION BY RANGE (day); \
             CREATE TABLE gone_1 PARTITION OF gone FOR VALUES FROM (current_date - 30) TO (current_date - 3); \
             CREATE TABLE by_id (id int) PARTITION BY RANGE (id); \
             CREATE TABLE by_id_1 PARTITION OF by_id FOR VALUES FROM (0) TO (10)",
        )
        .expect("partitions");
    let labels = [("datname", "postgres"), ("relation", "public.events")];
    let horizon = agent.wait_metric("pgmon_partition_horizon_seconds", &labels, WAIT, |v| {
        v > 0.0
    });
    assert!(
        (1.5 * 86400.0..2.5 * 86400.0).contains(&horizon),
        "{horizon}"
    );
    let oldest = agent.metric("pgmon_partition_oldest_age_seconds", &labels);
    assert!(
        (399.0 * 86400.0..401.0 * 86400.0).contains(&oldest),
        "{oldest}"
    );
    let gone = agent.metric(
        "pgmon_partition_horizon_seconds",
        &[("datname", "postgres"), ("relation", "public.gone")],
    );
    assert!(gone < -2.0 * 86400.0, "{gone}");
    let text = agent.metrics_text().expect("scrape");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("pgmon_partition_horizon_seconds") && l.contains("by_id")),
        "an integer key is no time range"
    );

    let mut alert = None;
    wait_until("PostgresPartitionMissing for events", || {
        alert = agent.firing_for("PostgresPartitionMissing", "relation", "public.events");
        alert.is_some()
    });
    let alert = alert.expect("firing");
    println!("{version}: {}", alert["message"]);
    assert_eq!(alert["severity"], "warning", "{alert}");
    let gone = agent
        .firing_for("PostgresPartitionMissing", "relation", "public.gone")
        .expect("gone's alert");
    println!("{version}: {}", gone["message"]);
    assert_eq!(gone["severity"], "critical", "{gone}");
    assert!(
        gone["message"]
            .as_str()
            .is_some_and(|m| m.contains("find no partition")),
        "{gone}"
    );
    let retention = agent
        .firing_for(
            "PostgresPartitionPastRetention",
            "relation",
            "public.events",
        )
        .expect("retention alert");
    println!("{version}: {}", retention["message"]);
    assert_eq!(retention["severity"], "warning", "{retention}");

    let v = api(agent, "/api/v1/partitions", "partition_times");
    let row = v["data"]["time_ranges"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["relation"] == "public.events"))
        .unwrap_or_else(|| panic!("events in time_ranges: {v:#}"));
    assert_eq!(row["partitions"].as_f64(), Some(2.0), "{row}");

    // The next months created, the oldest dropped: all three resolve.
    cluster
        .psql_admin(
            "CREATE TABLE events_next PARTITION OF events \
               FOR VALUES FROM (now() + interval '2 days') TO (now() + interval '60 days'); \
             CREATE TABLE gone_2 PARTITION OF gone FOR VALUES FROM (current_date - 3) TO (current_date + 30); \
             DROP TABLE events_old",
        )
        .expect("maintenance");
    wait_until("partition alerts resolved", || {
        agent
            .firing_for("PostgresPartitionMissing", "relation", "public.events")
            .is_none()
            && agent
                .firing_for("PostgresPartitionMissing", "relation", "public.gone")
                .is_none()
            && agent.firing("PostgresPartitionPastRetention").is_none()
    });
}

fn bloat(cluster: &Cluster, agent: &Agent, version: PgVersion) {
    for sql in [
        "CREATE TABLE churn AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 250000) g",
        "DELETE FROM churn WHERE id % 5 <> 0",
        "VACUUM ANALYZE churn",
    ] {
        cluster.psql_admin(sql).expect(sql);
    }
    let labels = [
        ("datname", "postgres"),
        ("relation", "public.churn"),
        ("method", "estimate"),
    ];
    let ratio = agent.wait_metric("pgmon_relation_bloat_ratio", &labels, WAIT, |v| v > 0.0);
    let bytes = agent.metric("pgmon_relation_bloat_bytes", &labels);
    println!(
        "{version}: churn estimate: {:.0}% ({bytes} bytes)",
        ratio * 100.0
    );
    assert!((0.6..0.95).contains(&ratio), "{ratio}");
    let mut alert = None;
    wait_until("PostgresTableBloat for churn", || {
        alert = agent.firing_for("PostgresTableBloat", "relation", "public.churn");
        alert.is_some()
    });
    println!("{version}: {}", alert.expect("alert")["message"]);
    let v = api(agent, "/api/v1/autovacuum", "bloat_estimate");
    assert!(
        v["data"]["bloat"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["relation"] == "public.churn")),
        "{v:#}"
    );

    // Measured where pgstattuple is installed.
    cluster
        .psql_admin("CREATE EXTENSION pgstattuple")
        .expect("pgstattuple");
    let approx = [
        ("datname", "postgres"),
        ("relation", "public.churn"),
        ("method", "pgstattuple_approx"),
    ];
    let measured = agent.wait_metric("pgmon_relation_bloat_ratio", &approx, WAIT, |v| v > 0.0);
    println!(
        "{version}: churn pgstattuple_approx: {:.0}%",
        measured * 100.0
    );
    assert!((0.6..0.95).contains(&measured), "{measured}");

    cluster
        .psql_admin("VACUUM FULL churn")
        .expect("VACUUM FULL");
    wait_until("PostgresTableBloat resolved", || {
        agent.firing("PostgresTableBloat").is_none()
    });
}

fn drift(cluster: &Cluster, agent: &Agent, version: PgVersion) {
    agent.wait_metric("pgmon_settings_changes_total", &[], WAIT, |_| true);
    cluster
        .psql_admin("ALTER SYSTEM SET work_mem = '64MB'")
        .expect("ALTER SYSTEM");
    cluster
        .psql_admin("ALTER SYSTEM SET shared_buffers = '200MB'")
        .expect("ALTER SYSTEM");
    cluster
        .psql_admin("SELECT pg_reload_conf()")
        .expect("reload");
    agent.wait_metric("pgmon_settings_changes_total", &[], WAIT, |v| v >= 1.0);
    let mut changed = None;
    wait_until("PostgresSettingChanged for work_mem", || {
        changed = agent.firing_for("PostgresSettingChanged", "name", "work_mem");
        changed.is_some()
    });
    println!("{version}: {}", changed.expect("alert")["message"]);
    let mut pending = None;
    wait_until("PostgresPendingRestart for shared_buffers", || {
        pending = agent.firing_for("PostgresPendingRestart", "name", "shared_buffers");
        pending.is_some()
    });
    println!("{version}: {}", pending.expect("alert")["message"]);
    let log = agent.log();
    assert!(
        log.contains("server setting changed") && log.contains("65536 kB"),
        "the log names the old and new value"
    );
    let v = api(agent, "/api/v1/settings", "pending_restart");
    assert!(
        v["data"]["pending_restart"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["name"] == "shared_buffers")),
        "{v:#}"
    );
    assert!(
        v["data"]["recent_changes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["name"] == "work_mem")),
        "{v:#}"
    );

    cluster
        .psql_admin("ALTER SYSTEM RESET shared_buffers")
        .expect("RESET");
    cluster
        .psql_admin("SELECT pg_reload_conf()")
        .expect("reload");
    wait_until("PostgresPendingRestart resolved", || {
        agent.firing("PostgresPendingRestart").is_none()
    });
}

fn maintenance(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    partitions(&cluster, &agent, version);
    bloat(&cluster, &agent, version);
    drift(&cluster, &agent, version);
}

#[test]
fn maintenance_pg15() {
    if require_root("maintenance_pg15") {
        maintenance(PgVersion::Pg15);
    }
}

#[test]
fn maintenance_pg18() {
    if require_root("maintenance_pg18") {
        maintenance(PgVersion::Pg18);
    }
}
