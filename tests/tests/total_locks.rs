//! Privileged test of the total-locks rule (seed 002 "Total Locks", issue 19): one
//! transaction locks 300 tables; the fast loop's `pgmon_locks` gauge counts the entries, the
//! capacity gauge matches the server's settings, and `PostgresTooManyLocks` (a low count in
//! the test's policy) goes pending, then firing, in `GET /api/v1/alerts`, and resolves
//! after the commit. PostgreSQL 15 and 18.

use std::{
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, FAST_HEALTH_LOOPS, PgVersion, SUPERUSER_MONITOR, Transport,
    agent_binary, free_port, require_root,
};
use serde_json::Value;

const TABLES: usize = 300;

fn config(cluster: &Cluster, port: u16) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\nmetrics:\n  listen: 127.0.0.1:{port}\n\
         {SUPERUSER_MONITOR}{FAST_HEALTH_LOOPS}alerts:\n  evaluation_interval_seconds: 1\n  \
         total_locks: {{warn: 200, crit: 100000, for_seconds: 4}}\n",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Unix),
    )
}

/// `PostgresTooManyLocks` in `data.firing` or `data.pending` of `GET /api/v1/alerts`.
fn locks_alert(agent: &Agent) -> (Option<Value>, Option<Value>) {
    let (code, body) = agent.get("/api/v1/alerts").expect("GET /api/v1/alerts");
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).expect("JSON");
    let find = |list: &str| {
        api["data"][list]
            .as_array()
            .expect(list)
            .iter()
            .find(|a| a["alertname"] == "PostgresTooManyLocks")
            .cloned()
    };
    (find("firing"), find("pending"))
}

fn total_locks(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    cluster.create_role_with_db("app").expect("role");
    let ddl: String = (0..TABLES)
        .map(|i| format!("CREATE TABLE t{i} (id int);\n"))
        .collect();
    cluster
        .psql("app", "app", Transport::Unix, &ddl)
        .expect("tables");
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");

    let expected_capacity: f64 = cluster
        .query_value(
            "postgres",
            "postgres",
            "SELECT current_setting('max_locks_per_transaction')::int \
             * (current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int)",
        )
        .expect("settings")
        .parse()
        .expect("number");
    let capacity = agent.wait_metric(
        "pgmon_lock_table_capacity",
        &[],
        Duration::from_secs(15),
        |v| v > 0.0,
    );
    assert_eq!(capacity, expected_capacity);
    let before = agent.wait_metric("pgmon_locks", &[], Duration::from_secs(15), |_| true);
    assert!(before < 200.0, "an idle cluster holds {before} locks");
    assert_eq!(
        locks_alert(&agent),
        (None, None),
        "nothing before the locks"
    );

    // One transaction holding ACCESS SHARE on every table.
    let mut held = cluster
        .hold_session("app", "app", Transport::Unix)
        .expect("session");
    let names: Vec<String> = (0..TABLES).map(|i| format!("t{i}")).collect();
    held.run(&format!(
        "BEGIN; LOCK TABLE {} IN ACCESS SHARE MODE;",
        names.join(", ")
    ))
    .expect("lock");
    let during = agent.wait_metric("pgmon_locks", &[], Duration::from_secs(15), |v| {
        v >= TABLES as f64
    });

    // Pending for its 4 s, then firing.
    let t = Instant::now();
    let mut seen_pending = None;
    let firing = loop {
        let (firing, pending) = locks_alert(&agent);
        if let Some(p) = pending {
            seen_pending.get_or_insert((t.elapsed(), p));
        }
        if let Some(f) = firing {
            break f;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "never fired");
        thread::sleep(Duration::from_millis(200));
    };
    let fired_after = t.elapsed();
    let (pending_at, pending) = seen_pending.expect("seen pending before firing");
    eprintln!(
        "{version:?}: pgmon_locks {before} idle, {during} with {TABLES} tables locked \
         (capacity {capacity}); pending at {pending_at:?}, firing at {fired_after:?}: {}",
        firing["message"]
    );
    assert_eq!(pending["state"], "pending", "{pending}");
    assert_eq!(firing["severity"], "warning", "{firing}");
    assert_eq!(
        firing["expression"],
        "pgmon_locks >= 200 (critical: >= 100000)"
    );
    assert!(firing["value"].as_f64().expect("value") >= TABLES as f64);
    assert!(
        fired_after >= Duration::from_secs(2),
        "fired {fired_after:?} after the gauge rose: its `for` is 4 s"
    );

    // The commit releases them: the gauge falls and the alert resolves.
    held.run("COMMIT").expect("commit");
    let after = agent.wait_metric("pgmon_locks", &[], Duration::from_secs(15), |v| v < 200.0);
    let t = Instant::now();
    while locks_alert(&agent).0.is_some() {
        assert!(t.elapsed() < Duration::from_secs(15), "still firing");
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{version:?}: after COMMIT pgmon_locks {after}, resolved");
}

#[test]
fn total_locks_pg15() {
    if require_root("total_locks_pg15") {
        total_locks(PgVersion::Pg15);
    }
}

#[test]
fn total_locks_pg18() {
    if require_root("total_locks_pg18") {
        total_locks(PgVersion::Pg18);
    }
}
