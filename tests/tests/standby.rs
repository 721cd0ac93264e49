//! Privileged test with a real streaming standby (`pg_basebackup -R` of the test cluster,
//! on the same host), PostgreSQL 15 and 18, the agent on the primary:
//!
//! - the standby is exported by its `application_name`, its lag in seconds and in bytes;
//! - with replay paused on the standby (`pg_wal_replay_pause()`) while the primary writes,
//!   the lag grows and `PostgresReplicationLag` fires (on bytes here: the policy sets
//!   `replication_lag_bytes`); resumed, the standby catches up and the alert resolves;
//! - `/api/v1/replication` lists the standby with its lag.

use std::time::Duration;

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, FAST_HEALTH_LOOPS, PgVersion, SUPERUSER_MONITOR, Transport,
    agent_binary, free_port, require_root,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(40);
const NAME: &str = "standby1";

fn config(cluster: &Cluster, port: u16) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\nmetrics:\n  listen: 127.0.0.1:{port}\n\
         {SUPERUSER_MONITOR}{FAST_HEALTH_LOOPS}alerts:\n  evaluation_interval_seconds: 1\n  \
         replication_lag_seconds: {{warn: 3600, crit: 7200, for_seconds: 0}}\n  \
         replication_lag_bytes: {{warn: 1000000, crit: 1e12}}\n",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Unix),
    )
}

fn wait_until(what: &str, f: impl FnMut() -> bool) {
    pgmon_tests::budget::wait_until(what, WAIT, f);
}

fn standby(version: PgVersion) {
    let primary = Cluster::start(version, ClusterOptions::default()).expect("primary");
    let standby = primary.start_standby(NAME).expect("standby");
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&primary, port),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    let labels = [("application_name", NAME)];
    agent.wait_metric("pgmon_replication_lag_bytes", &labels, WAIT, |_| true);
    assert_eq!(
        standby
            .query_value("postgres", "postgres", "SELECT pg_is_in_recovery()")
            .expect("standby answers"),
        "t"
    );

    // Replay paused while the primary writes: the lag grows, the alert fires.
    standby
        .psql_admin("SELECT pg_wal_replay_pause()")
        .expect("pause replay");
    primary
        .psql_admin(
            "CREATE TABLE w AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 50000) g",
        )
        .expect("write");
    let behind = agent.wait_metric("pgmon_replication_lag_bytes", &labels, WAIT, |v| {
        v >= 1_000_000.0
    });
    println!("{version}: {behind} bytes behind with replay paused");
    let mut alert = None;
    wait_until("PostgresReplicationLag firing", || {
        alert = agent.firing("PostgresReplicationLag");
        alert.is_some()
    });
    let alert = alert.expect("firing");
    println!("{version}: {}", alert["message"]);
    assert_eq!(alert["labels"]["application_name"], NAME, "{alert}");
    assert_eq!(alert["severity"], "warning", "{alert}");
    assert!(
        alert["message"].as_str().is_some_and(
            |m| m.starts_with("standby standby1: ") && m.contains("of WAL not yet replayed")
        ),
        "{alert}"
    );
    let (code, body) = agent.get("/api/v1/replication").expect("GET");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let row = v["data"]["standbys"]
        .as_array()
        .and_then(|s| s.iter().find(|r| r["application_name"] == NAME))
        .unwrap_or_else(|| panic!("{v:#}"));
    assert!(row["lag_bytes"].as_f64() >= Some(1_000_000.0), "{row}");

    // Resumed: it catches up, the alert resolves.
    standby
        .psql_admin("SELECT pg_wal_replay_resume()")
        .expect("resume replay");
    agent.wait_metric("pgmon_replication_lag_bytes", &labels, WAIT, |v| {
        v < 1_000_000.0
    });
    wait_until("PostgresReplicationLag resolved", || {
        agent.firing("PostgresReplicationLag").is_none()
    });
    assert_eq!(
        standby
            .query_value("postgres", "postgres", "SELECT count(*) FROM w")
            .expect("replayed"),
        "50000"
    );
    assert!(!agent.log().contains("panicked"));
}

#[test]
fn standby_pg15() {
    if require_root("standby_pg15") {
        standby(PgVersion::Pg15);
    }
}

#[test]
fn standby_pg18() {
    if require_root("standby_pg18") {
        standby(PgVersion::Pg18);
    }
}
