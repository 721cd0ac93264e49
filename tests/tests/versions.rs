//! The rest of the agent's SQL on every PostgreSQL major from 13 to 18 (the capture and
//! health suites, `capture.rs` and `health.rs`, run on each too). One test per version, on
//! one cluster and one agent:
//!
//! - pgmon's SQL (`pgmon-agent install-sql`, every file of `sql/`) applies;
//! - the health loops never fail (`pgmon_errors_total` stays 0 for each loop) while a
//!   row-lock wait is going on, and `pg_up` is 1;
//! - the wait shows as a blocked session, with its age where the server records it
//!   (`pg_locks.waitstart`, 14+): `pgmon_lock_wait_max_seconds` and the overview's
//!   `longest_wait_seconds` from 14, absent and null on 13;
//! - cleanup (observe mode, `lock_wait_seconds: 1`) audits the blocker from 14, and on 13
//!   audits nothing and says in its log why;
//! - every `/api/v1/*` endpoint answers 200.
//!
//! They need root and skip with a reason otherwise.

use std::{
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, FAST_HEALTH_LOOPS, PgVersion, SUPERUSER_MONITOR, Transport,
    agent_binary, free_port, metrics, require_root, tail,
};

const ROLE: &str = "alice";
/// How long a metric may take to show what a scenario did.
const WAIT: Duration = Duration::from_secs(20);

fn config(cluster: &Cluster, port: u16) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\n\
         capture:\n  hooks: auto\nmetrics:\n  listen: 127.0.0.1:{port}\n\
         cleanup:\n  enabled: true\n  mode: observe\n  interval_seconds: 1\n  lock_wait_seconds: 1\n\
         {SUPERUSER_MONITOR}{FAST_HEALTH_LOOPS}",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Unix),
    )
}

/// Whether `/metrics` has at least one sample of `name`.
fn exported(agent: &Agent, name: &str) -> bool {
    !metrics::find(&agent.metrics().expect("GET /metrics"), name, &[]).is_empty()
}

/// Polls `ok` every 200 ms for up to [`WAIT`]; panics naming `what`.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < WAIT, "timed out: {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// Cleanup's audit rows that would terminate a blocker (observe mode: nothing is done).
fn observed_lock_actions(cluster: &Cluster) -> usize {
    cluster
        .psql_admin(
            "SELECT count(*) FROM pgmon.audit WHERE source = 'cleanup' \
             AND step LIKE 'lock_wait > %' AND result LIKE 'observed%'",
        )
        .expect("pgmon.audit")
        .trim()
        .parse()
        .expect("count")
}

fn matrix(version: PgVersion) {
    let name = format!("versions_{version:?}").to_lowercase();
    if !require_root(&name) {
        return;
    }
    let t0 = Instant::now();
    let major = version.major();
    let binary = agent_binary().expect("agent binary (build with cargo build --release)");
    let cluster = Cluster::start(version, ClusterOptions::default())
        .unwrap_or_else(|e| panic!("{version}: {e:#}"));
    let install = std::process::Command::new(&binary)
        .args(["install-sql", "--dsn"])
        .arg(cluster.conninfo("postgres", "postgres", Transport::Unix))
        .output()
        .expect("pgmon-agent install-sql");
    assert!(
        install.status.success(),
        "{version}: install-sql: {}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    cluster.create_role_with_db(ROLE).expect("role");
    cluster.pgbench_init(ROLE, ROLE, 1).expect("pgbench -i");

    let port = free_port();
    let mut agent = Agent::start(
        &binary,
        &config(&cluster, port),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent starts");
    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            eprintln!("FAIL: {what}");
            failures.push(what);
        }
    };

    // Health: every loop up; then the scenarios.
    let t_health = Instant::now();
    for l in ["fast", "medium", "slow", "hourly"] {
        agent.wait_metric("pgmon_last_scrape_success", &[("loop", l)], WAIT, |v| {
            v == 1.0
        });
    }
    check(
        agent.metric("pg_up", &[]) == 1.0,
        format!("{version}: pg_up is not 1"),
    );
    agent.wait_metric("pg_stat_statements_calls_total", &[], WAIT, |v| v > 0.0);

    // A row-lock wait (not a table lock, which would block the loops' size functions).
    let mut holder = cluster
        .hold_session(ROLE, ROLE, Transport::Unix)
        .expect("session");
    holder
        .run("BEGIN; UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1")
        .expect("row lock");
    let mut waiter = cluster.psql_background(
        ROLE,
        ROLE,
        "UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1",
    );
    agent.wait_metric("pgmon_blocked_backends", &[], WAIT, |v| v == 1.0);
    agent.wait_metric("pgmon_blocking_chain_max_length", &[], WAIT, |v| v == 2.0);
    let (code, body) = agent.get("/api/v1/overview").expect("overview");
    check(
        code == 200,
        format!("{version}: overview HTTP {code}: {body}"),
    );
    let overview: serde_json::Value = serde_json::from_str(&body).expect("overview JSON");
    let locks = &overview["data"]["locks"];
    if major >= 14 {
        agent.wait_metric("pgmon_lock_wait_max_seconds", &[], WAIT, |v| v >= 1.0);
        check(
            locks["longest_wait_seconds"].is_number(),
            format!("{version}: overview locks {locks}"),
        );
        wait_for("cleanup observes the lock wait", || {
            observed_lock_actions(&cluster) >= 1
        });
    } else {
        // pg_locks.waitstart is 14+: the age is unknown, so neither exported nor acted on.
        thread::sleep(Duration::from_secs(3));
        check(
            !exported(&agent, "pgmon_lock_wait_max_seconds"),
            format!("{version}: pgmon_lock_wait_max_seconds exported without pg_locks.waitstart"),
        );
        check(
            locks["longest_wait_seconds"].is_null() && locks["blocked_sessions"] == 1,
            format!("{version}: overview locks {locks}"),
        );
        check(
            observed_lock_actions(&cluster) == 0,
            format!("{version}: cleanup acted on a lock wait of unknown age"),
        );
        check(
            agent.log().contains("needs PostgreSQL 14+"),
            format!("{version}: no warning that cleanup.lock_wait_seconds cannot act"),
        );
    }
    holder.run("ROLLBACK").expect("rollback");
    check(
        waiter.wait().expect("waiter").success(),
        format!("{version}: the waiting UPDATE failed"),
    );
    agent.wait_metric("pgmon_blocked_backends", &[], WAIT, |v| v == 0.0);

    // Each loop runs again after the wait, and none ever failed.
    cluster
        .psql(
            ROLE,
            ROLE,
            Transport::Unix,
            "CREATE TABLE w AS SELECT g FROM generate_series(1, 100000) g",
        )
        .expect("table w");
    agent.wait_metric(
        "pgmon_relation_size_bytes",
        &[("datname", ROLE), ("relation", "public.w")],
        WAIT,
        |v| v > 1.0e6,
    );
    agent.wait_metric("pgmon_database_xid_age", &[("datname", ROLE)], WAIT, |v| {
        v > 0.0
    });
    for l in ["fast", "medium", "slow", "hourly"] {
        let errors = agent.metric("pgmon_errors_total", &[("loop", l)]);
        let success = agent.metric("pgmon_last_scrape_success", &[("loop", l)]);
        check(
            errors == 0.0 && success == 1.0,
            format!("{version}: loop {l}: {errors} failed runs, last success {success}"),
        );
    }
    println!("{version}: health checks {:?}", t_health.elapsed());

    // The read API.
    for path in [
        "/api/v1/overview",
        "/api/v1/autovacuum",
        "/api/v1/top-queries",
        "/api/v1/storage",
        "/api/v1/partitions",
        "/api/v1/replication",
    ] {
        let (code, body) = agent.get(path).expect("GET");
        check(
            code == 200,
            format!("{version}: GET {path}: HTTP {code}: {}", tail(&body, 5)),
        );
    }

    holder.close();
    let exit = agent.stop().expect("agent stops");
    check(
        exit.success(),
        format!("{version}: agent exit status {exit}"),
    );
    if !failures.is_empty() {
        panic!(
            "{} failure(s):\n{}\nagent log tail:\n{}",
            failures.len(),
            failures.join("\n"),
            tail(&agent.log(), 30)
        );
    }
    println!("{version}: whole matrix {:?}", t0.elapsed());
}

#[test]
fn versions_pg13() {
    matrix(PgVersion::Pg13);
}

#[test]
fn versions_pg14() {
    matrix(PgVersion::Pg14);
}

#[test]
fn versions_pg15() {
    matrix(PgVersion::Pg15);
}

#[test]
fn versions_pg16() {
    matrix(PgVersion::Pg16);
}

#[test]
fn versions_pg17() {
    matrix(PgVersion::Pg17);
}

#[test]
fn versions_pg18() {
    matrix(PgVersion::Pg18);
}
