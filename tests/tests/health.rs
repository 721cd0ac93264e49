//! Privileged tests of the health pollers on every PostgreSQL major from 13 to 18: each
//! scenario is driven for real with psql sessions and the metric the loops export is
//! asserted — a long transaction idle in transaction, a blocking chain (its lock-wait age
//! from 14, which has `pg_locks.waitstart`; absent on 13), connections near
//! `max_connections`, a temp-file spill, a WAL burst (with `pg_stat_wal`'s counters from
//! 14 and `pg_stat_io`'s bytes from 16, absent before), a requested checkpoint
//! (`pg_stat_bgwriter` before 17, `pg_stat_checkpointer` from 17), wraparound ages and
//! relation sizes, and every loop's own success metric; and `pgmon-agent check` on each;
//! and `/healthz` following the database down and up again (15 and 18).
//! `versions.rs` adds what the rest of the agent's SQL does on each version.

use std::{thread, time::Duration};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, FAST_HEALTH_LOOPS, PgVersion, SUPERUSER_MONITOR, Transport,
    agent_binary, free_port, metrics, require_root,
};

const APP: &str = "app";
/// How long a metric may take to show what a scenario did.
const WAIT: Duration = Duration::from_secs(20);

fn config(cluster: &Cluster, port: u16) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\nmetrics:\n  listen: 127.0.0.1:{port}\n{SUPERUSER_MONITOR}\
         {FAST_HEALTH_LOOPS}",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Unix),
    )
}

fn health(version: PgVersion) {
    let cluster = Cluster::start(
        version,
        ClusterOptions {
            max_connections: 30,
            ..ClusterOptions::default()
        },
    )
    .expect("cluster");
    cluster.create_role_with_db(APP).expect("role");
    cluster
        .psql(
            APP,
            APP,
            Transport::Unix,
            "CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 100000) g; \
             CREATE INDEX t_v ON t (v); ANALYZE t",
        )
        .expect("table");
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");

    // Every loop runs and succeeds; /healthz is not degraded.
    for l in ["fast", "medium", "slow", "hourly"] {
        agent.wait_metric("pgmon_last_scrape_success", &[("loop", l)], WAIT, |v| {
            v == 1.0
        });
    }
    assert_eq!(agent.metric("pg_up", &[]), 1.0);
    assert_eq!(
        agent.metric("pg_settings_max_connections", &[]),
        30.0,
        "max_connections"
    );

    // A transaction left idle.
    let mut idle = cluster
        .hold_session(APP, APP, Transport::Unix)
        .expect("session");
    idle.run("BEGIN; SELECT txid_current()").expect("begin");
    agent.wait_metric("pgmon_idle_in_transaction_max_seconds", &[], WAIT, |v| {
        v >= 2.0
    });
    assert!(agent.metric("pgmon_oldest_xact_age_seconds", &[]) >= 2.0);
    assert!(agent.metric("pgmon_backend_xmin_age", &[]) >= 0.0);
    agent.wait_metric(
        "pg_stat_activity_backends",
        &[("datname", APP), ("state", "idle in transaction")],
        WAIT,
        |v| v == 1.0,
    );

    // A blocking chain: idle holds an exclusive lock; two sessions wait behind it.
    idle.run("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .expect("lock");
    let mut waiters = vec![
        cluster.psql_background(APP, APP, "SELECT count(*) FROM t"),
        cluster.psql_background(APP, APP, "SELECT count(*) FROM t"),
    ];
    agent.wait_metric("pgmon_blocked_backends", &[], WAIT, |v| v == 2.0);
    if version.major() >= 14 {
        agent.wait_metric("pgmon_lock_wait_max_seconds", &[], WAIT, |v| v >= 1.0);
    } else {
        thread::sleep(Duration::from_millis(1500));
        let m = agent.metrics().expect("metrics");
        assert!(
            metrics::find(&m, "pgmon_lock_wait_max_seconds", &[]).is_empty(),
            "{version} has no pg_locks.waitstart: the lock-wait age must not be exported"
        );
    }
    assert!(agent.metric("pgmon_blocking_chain_max_length", &[]) >= 2.0);
    idle.run("ROLLBACK").expect("rollback");
    for w in &mut waiters {
        assert!(w.wait().expect("waiter").success(), "waiter finished");
    }
    agent.wait_metric("pgmon_blocked_backends", &[], WAIT, |v| v == 0.0);

    // Connections near max_connections: 20 more sessions.
    let held: Vec<_> = (0..20)
        .map(|_| {
            cluster
                .hold_session(APP, APP, Transport::Unix)
                .expect("session")
        })
        .collect();
    agent.wait_metric("pgmon_connections_used_ratio", &[], WAIT, |v| {
        v >= 21.0 / 30.0
    });
    drop(held);

    // A temp-file spill.
    let before = agent.metric("pg_stat_database_temp_files_total", &[("datname", APP)]);
    cluster
        .psql(
            APP,
            APP,
            Transport::Unix,
            "SET work_mem = '64kB'; SELECT count(*) FROM (SELECT g, v FROM t ORDER BY g DESC, v OFFSET 1) s",
        )
        .expect("spill");
    agent.wait_metric(
        "pg_stat_database_temp_files_total",
        &[("datname", APP)],
        WAIT,
        |v| v > before,
    );

    // A WAL burst: the WAL position, pg_stat_wal's records (14+), and on 18 pg_stat_io's
    // relation extension by client backends (16+; absent on 15, never a made-up zero).
    let io_extend = [("backend_type", "client backend"), ("object", "relation")];
    let records = agent.metric("pgmon_wal_records_total", &[]);
    let extended = agent.metric("pgmon_io_extend_bytes_total", &io_extend);
    let before = agent.metric("pgmon_wal_position_bytes_total", &[]);
    cluster
        .psql(
            APP,
            APP,
            Transport::Unix,
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
        )
        .expect("insert");
    agent.wait_metric("pgmon_wal_position_bytes_total", &[], WAIT, |v| {
        v >= before + 5.0e6
    });
    let io = agent.metrics().expect("metrics");
    let wal_families = [
        "pgmon_wal_records_total",
        "pgmon_wal_full_page_images_total",
        "pgmon_wal_bytes_total",
        "pgmon_wal_buffers_full_total",
    ];
    if version.major() >= 14 {
        agent.wait_metric("pgmon_wal_records_total", &[], WAIT, |v| {
            v >= records + 100_000.0
        });
        assert!(agent.metric("pgmon_wal_bytes_total", &[]) >= 5.0e6);
        for family in wal_families {
            assert!(!metrics::find(&io, family, &[]).is_empty(), "{family}");
        }
    } else {
        for family in wal_families {
            assert!(
                metrics::find(&io, family, &[]).is_empty(),
                "{family} exported on {version}, which has no pg_stat_wal"
            );
        }
    }
    let io_families = [
        "pgmon_io_read_bytes_total",
        "pgmon_io_write_bytes_total",
        "pgmon_io_extend_bytes_total",
    ];
    if version.major() >= 16 {
        agent.wait_metric("pgmon_io_extend_bytes_total", &io_extend, WAIT, |v| {
            v >= extended + 5.0e6
        });
        for family in io_families {
            assert!(!metrics::find(&io, family, &[]).is_empty(), "{family}");
        }
    } else {
        for family in io_families {
            assert!(
                metrics::find(&io, family, &[]).is_empty(),
                "{family} exported on {version}, which has no pg_stat_io"
            );
        }
    }

    // A requested checkpoint, from whichever view this version has.
    let before = agent.metric("pgmon_checkpoints_total", &[("kind", "requested")]);
    cluster.psql_admin("CHECKPOINT").expect("checkpoint");
    agent.wait_metric(
        "pgmon_checkpoints_total",
        &[("kind", "requested")],
        WAIT,
        |v| v > before,
    );

    // Inside the database: relation size, wraparound ages, transactions per second.
    agent.wait_metric(
        "pgmon_relation_size_bytes",
        &[("datname", APP), ("relation", "public.t"), ("relkind", "r")],
        WAIT,
        |v| v > 10.0e6,
    );
    // Its index: size and scans; its last analyze (ANALYZE t above).
    let index = [
        ("datname", APP),
        ("index", "public.t_v"),
        ("relation", "public.t"),
    ];
    agent.wait_metric("pgmon_index_size_bytes", &index, WAIT, |v| v > 1.0e6);
    agent.wait_metric("pgmon_index_scans_total", &index, WAIT, |v| v >= 0.0);
    agent.wait_metric(
        "pgmon_relation_analyze_age_seconds",
        &[("datname", APP), ("relation", "public.t")],
        WAIT,
        |v| v >= 0.0,
    );
    agent.wait_metric("pgmon_database_xid_age", &[("datname", APP)], WAIT, |v| {
        v > 0.0
    });
    agent.wait_metric(
        "pgmon_relation_xid_age_max",
        &[("datname", APP)],
        WAIT,
        |v| v > 0.0,
    );
    agent.wait_metric("pg_stat_statements_calls_total", &[], WAIT, |v| v > 0.0);
    // The canary: a round trip and a tiny plan executed, both short and not zero.
    for canary in ["pgmon_canary_seconds", "pgmon_canary_execution_seconds"] {
        agent.wait_metric(canary, &[], WAIT, |v| v > 0.0 && v < 1.0);
    }
    agent.wait_metric(
        "pg_stat_statements_shared_blks_read_total",
        &[],
        WAIT,
        |v| v >= 0.0,
    );
    let (code, body) = agent.get("/healthz").expect("healthz");
    assert_eq!(code, 200, "{body}");
    assert!(!agent.log().contains("panicked"));
}

/// `pgmon-agent check`, without an agent: OK on a quiet cluster, WARNING then CRITICAL as
/// a session stays idle in transaction past the policy's thresholds, UNKNOWN once the
/// cluster is down.
fn check_report(version: PgVersion) {
    let mut cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    cluster.create_role_with_db(APP).expect("role");
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let policy = |warn: f64, crit: f64| {
        let path = dir.join(format!("check-{warn}-{crit}.yaml"));
        std::fs::write(
            &path,
            format!(
                "cluster:\n  data_directory: {}\n  connection: \"{}\"\n\
                 alerts:\n  idle_in_transaction_seconds: {{warn: {warn}, crit: {crit}}}\n",
                cluster.data_dir().display(),
                cluster.conninfo("postgres", "postgres", Transport::Unix),
            ),
        )
        .expect("policy");
        path
    };
    let run = |path: &std::path::Path| {
        let out = std::process::Command::new(agent_binary().expect("binary"))
            .args(["check", "--config"])
            .arg(path)
            .output()
            .expect("pgmon-agent check");
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("check prints JSON");
        (out.status.code(), report)
    };
    let quiet = policy(300.0, 1800.0);
    let (code, report) = run(&quiet);
    assert_eq!(
        (code, report["state"].as_str()),
        (Some(0), Some("OK")),
        "{report}"
    );

    let mut idle = cluster
        .hold_session(APP, APP, Transport::Unix)
        .expect("session");
    idle.run("BEGIN; SELECT 1").expect("begin");
    thread::sleep(Duration::from_millis(2500));
    let (code, report) = run(&policy(1.0, 1000.0));
    assert_eq!(code, Some(1), "{report}");
    let idle_check = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "idle_in_transaction_seconds")
        .cloned()
        .expect("idle check");
    assert_eq!(idle_check["state"], "WARNING", "{idle_check}");
    assert!(idle_check["value"].as_f64().unwrap() >= 2.0);
    let (code, report) = run(&policy(1.0, 2.0));
    assert_eq!(
        (code, report["state"].as_str()),
        (Some(2), Some("CRITICAL")),
        "{report}"
    );
    drop(idle);

    cluster.stop().expect("stop");
    let (code, report) = run(&quiet);
    assert_eq!(
        (code, report["state"].as_str()),
        (Some(3), Some("UNKNOWN")),
        "{report}"
    );
    assert!(report["error"].as_str().is_some_and(|e| !e.is_empty()));
}

/// `/healthz` tells the truth: 200 while the database answers, 503 naming the unreachable
/// database once the cluster has been stopped for a fast-loop interval, 200 again once it
/// is back. The agent is named (`cluster.name`): its series carry the `cluster` label.
fn healthz_follows_the_database(version: PgVersion) {
    let mut cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    let port = free_port();
    // Named: every series carries cluster="healthz-test".
    let named =
        config(&cluster, port).replacen("\nmetrics:", "\n  name: healthz-test\nmetrics:", 1);
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &named,
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    let healthz = || agent.get("/healthz").expect("GET /healthz");
    let wait = |what: &str, f: &dyn Fn(u16, &str) -> bool| {
        let started = std::time::Instant::now();
        loop {
            let (code, body) = healthz();
            if f(code, &body) {
                return (code, body, started.elapsed());
            }
            assert!(started.elapsed() < WAIT, "{what}: still {code} {body}");
            thread::sleep(Duration::from_millis(100));
        }
    };
    agent.wait_metric(
        "pgmon_last_scrape_success",
        &[("loop", "fast")],
        WAIT,
        |v| v == 1.0,
    );
    let (_, body, _) = wait("healthy", &|code, _| code == 200);
    assert!(body.starts_with("ok"), "{body}");
    assert_eq!(agent.metric("pg_up", &[("cluster", "healthz-test")]), 1.0);
    let scrape = agent.metrics_text().expect("scrape");
    for family in [
        "pgmon_capture_dropped_total",
        "process_resident_memory_bytes",
        "pg_up",
    ] {
        let lines: Vec<&str> = scrape.lines().filter(|l| l.starts_with(family)).collect();
        assert!(
            !lines.is_empty() && lines.iter().all(|l| l.contains("cluster=\"healthz-test\"")),
            "{family} without the cluster label: {lines:?}"
        );
    }

    cluster.stop().expect("stop the cluster");
    let (_, body, took) = wait("unhealthy", &|code, _| code == 503);
    println!("{version}: 503 {took:?} after the stop: {}", body.trim());
    assert!(body.contains("database unreachable for"), "{body}");
    assert_eq!(agent.metric("pg_up", &[]), 0.0);

    cluster.restart().expect("start the cluster again");
    let (_, body, took) = wait("healthy again", &|code, _| code == 200);
    println!("{version}: 200 {took:?} after the start: {}", body.trim());
    assert!(!agent.log().contains("panicked"));
}

#[test]
fn healthz_pg15() {
    if require_root("healthz_pg15") {
        healthz_follows_the_database(PgVersion::Pg15);
    }
}

#[test]
fn healthz_pg18() {
    if require_root("healthz_pg18") {
        healthz_follows_the_database(PgVersion::Pg18);
    }
}

#[test]
fn check_pg13() {
    if require_root("check_pg13") {
        check_report(PgVersion::Pg13);
    }
}

#[test]
fn check_pg14() {
    if require_root("check_pg14") {
        check_report(PgVersion::Pg14);
    }
}

#[test]
fn check_pg15() {
    if require_root("check_pg15") {
        check_report(PgVersion::Pg15);
    }
}

#[test]
fn check_pg16() {
    if require_root("check_pg16") {
        check_report(PgVersion::Pg16);
    }
}

#[test]
fn check_pg17() {
    if require_root("check_pg17") {
        check_report(PgVersion::Pg17);
    }
}

#[test]
fn check_pg18() {
    if require_root("check_pg18") {
        check_report(PgVersion::Pg18);
    }
}

#[test]
fn health_pg13() {
    if require_root("health_pg13") {
        health(PgVersion::Pg13);
    }
}

#[test]
fn health_pg14() {
    if require_root("health_pg14") {
        health(PgVersion::Pg14);
    }
}

#[test]
fn health_pg15() {
    if require_root("health_pg15") {
        health(PgVersion::Pg15);
    }
}

#[test]
fn health_pg16() {
    if require_root("health_pg16") {
        health(PgVersion::Pg16);
    }
}

#[test]
fn health_pg17() {
    if require_root("health_pg17") {
        health(PgVersion::Pg17);
    }
}

#[test]
fn health_pg18() {
    if require_root("health_pg18") {
        health(PgVersion::Pg18);
    }
}
