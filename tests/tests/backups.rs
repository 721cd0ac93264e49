//! Privileged test of WAL archiving and replication-slot health, with the real agent on
//! PostgreSQL 15 and 18 (`archive_mode = on`, an `archive_command` that fails):
//!
//! - a WAL segment switched out waits for the failing `archive_command`: pgmon exports it
//!   (`pgmon_archive_pending_segments`, the oldest one's age, `pg_stat_archiver`'s failed
//!   count) and its engine fires `PostgresWalArchivingBehind`; once `archive_command`
//!   succeeds the segment is archived and the alert resolves;
//! - a physical slot reserved with no consumer holds back the WAL written after it:
//!   `pgmon_replication_slot_inactive_retained_bytes{slot_name}` grows and
//!   `PostgresInactiveReplicationSlot` fires; dropping the slot resolves it;
//! - `/api/v1/replication` carries the archiver, the pending segments and the slot, with
//!   their SQL.

use std::time::Duration;

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, FAST_HEALTH_LOOPS, PgVersion, SUPERUSER_MONITOR, Transport,
    agent_binary, free_port, require_root,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn config(cluster: &Cluster, port: u16) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\nmetrics:\n  listen: 127.0.0.1:{port}\n\
         {SUPERUSER_MONITOR}{FAST_HEALTH_LOOPS}alerts:\n  evaluation_interval_seconds: 1\n  \
         archive_pending_seconds: {{warn: 1, crit: 3600}}\n  \
         inactive_slot_retained_bytes: {{warn: 1000000, crit: 1e12, for_seconds: 0}}\n",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Unix),
    )
}

fn wait_until(what: &str, f: impl FnMut() -> bool) {
    pgmon_tests::budget::wait_until(what, WAIT, f);
}

fn backups(version: PgVersion) {
    let cluster = Cluster::start(
        version,
        ClusterOptions {
            settings: vec![
                ("archive_mode".into(), "on".into()),
                ("archive_command".into(), "'false'".into()),
            ],
            ..ClusterOptions::default()
        },
    )
    .expect("cluster");
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    agent.wait_metric("pgmon_archive_mode", &[], WAIT, |v| v == 1.0);

    // A segment switched out waits for an archive_command that fails.
    cluster
        .psql_admin("CREATE TABLE w AS SELECT generate_series(1, 10000) AS g")
        .expect("write");
    cluster
        .psql_admin("SELECT pg_switch_wal()")
        .expect("pg_switch_wal");
    agent.wait_metric("pgmon_archive_pending_segments", &[], WAIT, |v| v >= 1.0);
    agent.wait_metric("pg_stat_archiver_failed_count_total", &[], WAIT, |v| {
        v >= 1.0
    });
    let mut alert = None;
    wait_until("PostgresWalArchivingBehind firing", || {
        alert = agent.firing("PostgresWalArchivingBehind");
        alert.is_some()
    });
    let alert = alert.expect("firing");
    println!("{version}: {}", alert["message"]);
    assert_eq!(alert["severity"], "warning", "{alert}");
    assert!(
        alert["message"]
            .as_str()
            .is_some_and(|m| m.contains("wait for archive_command")
                && m.contains("archive_command last failed")),
        "{alert}"
    );

    // The API says the same, with the statements behind it.
    let (code, body) = agent.get("/api/v1/replication").expect("GET");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        v["data"]["archive_pending"]["segments"].as_f64() >= Some(1.0),
        "{v:#}"
    );
    assert!(
        v["data"]["archiver"]["failed_count"].as_f64() >= Some(1.0),
        "{v:#}"
    );
    assert_eq!(v["data"]["archiver"]["archive_mode_on"], true, "{v:#}");
    let names: Vec<&str> = v["sql"]
        .as_array()
        .expect("sql")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        names.contains(&"archiver") && names.contains(&"archive_pending"),
        "{names:?}"
    );

    // archive_command fixed: the segment goes, the alert resolves.
    cluster
        .psql_admin("ALTER SYSTEM SET archive_command = 'true'")
        .expect("ALTER SYSTEM");
    cluster
        .psql_admin("SELECT pg_reload_conf()")
        .expect("reload");
    agent.wait_metric("pgmon_archive_pending_segments", &[], WAIT, |v| v == 0.0);
    wait_until("PostgresWalArchivingBehind resolved", || {
        agent.firing("PostgresWalArchivingBehind").is_none()
    });
    assert!(agent.metric("pg_stat_archiver_archived_count_total", &[]) >= 1.0);

    // A slot nobody consumes holds back the WAL written after it.
    cluster
        .psql_admin("SELECT pg_create_physical_replication_slot('forgotten', true)")
        .expect("slot");
    cluster
        .psql_admin(
            "CREATE TABLE big AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 50000) g",
        )
        .expect("write");
    let labels = [("slot_name", "forgotten")];
    let held = agent.wait_metric(
        "pgmon_replication_slot_inactive_retained_bytes",
        &labels,
        WAIT,
        |v| v >= 1_000_000.0,
    );
    assert_eq!(agent.metric("pgmon_replication_slot_active", &labels), 0.0);
    assert!(agent.metric("pgmon_replication_slot_retained_bytes", &labels) >= held);
    let mut alert = None;
    wait_until("PostgresInactiveReplicationSlot firing", || {
        alert = agent.firing("PostgresInactiveReplicationSlot");
        alert.is_some()
    });
    let alert = alert.expect("firing");
    println!("{version}: {}", alert["message"]);
    assert_eq!(alert["labels"]["slot_name"], "forgotten", "{alert}");
    cluster
        .psql_admin("SELECT pg_drop_replication_slot('forgotten')")
        .expect("drop the slot");
    wait_until("PostgresInactiveReplicationSlot resolved", || {
        agent.firing("PostgresInactiveReplicationSlot").is_none()
    });
    assert!(!agent.log().contains("panicked"));
}

#[test]
fn backups_pg15() {
    if require_root("backups_pg15") {
        backups(PgVersion::Pg15);
    }
}

#[test]
fn backups_pg18() {
    if require_root("backups_pg18") {
        backups(PgVersion::Pg18);
    }
}
