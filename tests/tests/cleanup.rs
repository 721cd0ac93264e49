//! Privileged tests of session cleanup and emergency on PostgreSQL 15 and 18: the cleanup
//! rules end exactly the sessions they should (idle in transaction, a long statement, the
//! blocker of a lock wait) and no exempt or superuser one; `pgmon-agent emergency --yes` and
//! SIGUSR1 leave only the essential backends (superusers, pgmon's own, autovacuum).

use std::{
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, Transport, agent_binary, budget::agent_config,
    free_port, require_root,
};

const DB: &str = "shop";

fn sessions_of(cluster: &Cluster, role: &str) -> u32 {
    cluster
        .query_value(
            "postgres",
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}' \
                 AND backend_type = 'client backend'"
            ),
        )
        .expect("pg_stat_activity")
        .parse()
        .expect("count")
}

fn spawn_psql(cluster: &Cluster, role: &str, sql: &str) -> Child {
    cluster
        .psql_cmd(role, DB, Transport::Unix)
        .arg("-c")
        .arg(sql)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql")
}

fn audit(cluster: &Cluster, source: &str) -> Vec<String> {
    cluster
        .psql_admin(&format!(
            "SELECT role || '|' || action || '|' || step || '|' || result FROM pgmon.audit \
             WHERE source = '{source}' ORDER BY id"
        ))
        .expect("audit")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn cleanup(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    for file in [
        "sql/001_roles.sql",
        "sql/002_enforcement.sql",
        "sql/005_sessions.sql",
    ] {
        cluster.run_sql_file("postgres", file).expect("sql");
    }
    for role in ["idler", "sleeper", "locker", "waiter", "boss"] {
        cluster.create_role(role).expect("role");
    }
    cluster
        .psql_admin("CREATE ROLE root2 SUPERUSER LOGIN")
        .expect("root2");
    cluster.create_database(DB, "postgres").expect("db");
    cluster
        .psql(
            "postgres",
            DB,
            Transport::Unix,
            "CREATE TABLE t AS SELECT generate_series(1, 1000) AS g; GRANT SELECT ON t TO PUBLIC; GRANT UPDATE ON t TO locker",
        )
        .expect("table");

    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &agent_config(
            &cluster,
            port,
            "cleanup:\n  enabled: true\n  mode: enforce\n  interval_seconds: 1\n  \
             idle_in_transaction_seconds: 3\n  statement_seconds: 3\n  lock_wait_seconds: 1\n  \
             exempt: [boss]\n",
        ),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");

    let hold = |role: &str, sql: &str| {
        let mut s = cluster
            .hold_session(role, DB, Transport::Unix)
            .expect("session");
        s.run(sql).expect("statement");
        s
    };
    let _idler = hold("idler", "BEGIN; SELECT 1");
    let _locker = hold("locker", "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE");
    let _boss_idle = hold("boss", "BEGIN; SELECT 1");
    let _root2_idle = hold("root2", "BEGIN; SELECT 1");
    let waiter = spawn_psql(&cluster, "waiter", "SELECT count(*) FROM t");
    let sleeper = spawn_psql(&cluster, "sleeper", "SELECT pg_sleep(60)");
    let boss_sleeper = spawn_psql(&cluster, "boss", "SELECT pg_sleep(6)");

    wait_for("idler and locker terminated", || {
        sessions_of(&cluster, "idler") == 0 && sessions_of(&cluster, "locker") == 0
    });
    let out = sleeper.wait_with_output().expect("sleeper");
    assert!(!out.status.success(), "the long statement was cancelled");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("canceling statement due to user request"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        waiter.wait_with_output().expect("waiter").status.success(),
        "the blocked session got its lock once the blocker was gone"
    );
    let boss_out = boss_sleeper.wait_with_output().expect("boss");
    assert!(
        boss_out.status.success(),
        "exempt boss's 6 s statement ran to the end: {}",
        String::from_utf8_lossy(&boss_out.stderr)
    );
    assert_eq!(
        sessions_of(&cluster, "boss"),
        1,
        "boss's idle session stays"
    );
    assert_eq!(sessions_of(&cluster, "root2"), 1, "the superuser's stays");

    let rows = audit(&cluster, "cleanup");
    let row = |role: &str| {
        rows.iter()
            .filter(|r| r.starts_with(&format!("{role}|")))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        matches!(row("idler").as_slice(), [r] if r.contains("|terminate|idle_in_transaction > 3 s") && r.ends_with("applied: terminated")),
        "{rows:?}"
    );
    assert!(
        matches!(row("sleeper").as_slice(), [r] if r.contains("|cancel|statement > 3 s") && r.ends_with("applied: cancelled")),
        "{rows:?}"
    );
    assert!(
        matches!(row("locker").as_slice(), [r] if r.contains("|terminate|lock_wait > 1 s") && r.ends_with("applied: terminated")),
        "{rows:?}"
    );
    assert!(
        row("boss").is_empty() && row("root2").is_empty(),
        "{rows:?}"
    );
    assert!(row("waiter").is_empty(), "{rows:?}");

    // Emergency from the CLI: every ordinary session goes; the superuser's, the agent's own
    // and autovacuum stay.
    let _a = hold("idler", "SELECT 1");
    let _b = hold("sleeper", "BEGIN; SELECT 1");
    let out = Command::new(agent_binary().expect("binary"))
        .args(["emergency", "--yes", "--config"])
        .arg(agent.config_path())
        .stdin(Stdio::null())
        .output()
        .expect("emergency");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for role in ["idler", "sleeper", "boss"] {
        wait_for(&format!("{role} gone"), || sessions_of(&cluster, role) == 0);
    }
    assert_eq!(sessions_of(&cluster, "root2"), 1, "superuser spared");
    assert_eq!(
        cluster
            .query_value(
                "postgres",
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum launcher'"
            )
            .expect("launcher"),
        "1"
    );
    assert!(agent.status_json().is_ok(), "the agent still works");
    let rows = audit(&cluster, "emergency");
    assert!(
        rows.iter()
            .any(|r| r.starts_with("idler|terminate|emergency: pgmon-agent emergency|terminated")),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("root2|") && r.contains("spared")),
        "{rows:?}"
    );

    // Without a terminal and without --yes, nothing happens.
    let _c = hold("idler", "SELECT 1");
    let out = Command::new(agent_binary().expect("binary"))
        .args(["emergency", "--config"])
        .arg(agent.config_path())
        .stdin(Stdio::null())
        .output()
        .expect("emergency");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(sessions_of(&cluster, "idler"), 1);

    // SIGUSR1 to the agent does the same.
    // SAFETY: kill(2) with a pid we started and a valid signal number.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGUSR1) }, 0);
    wait_for("idler gone after SIGUSR1", || {
        sessions_of(&cluster, "idler") == 0
    });
    assert!(
        audit(&cluster, "emergency")
            .iter()
            .any(|r| r.contains("emergency: SIGUSR1|terminated")),
        "SIGUSR1 audited"
    );
    assert!(agent.log().contains("emergency done"));
    assert!(agent.status_json().is_ok(), "the agent survived SIGUSR1");
}

#[test]
fn cleanup_pg15() {
    if require_root("cleanup_pg15") {
        cleanup(PgVersion::Pg15);
    }
}

#[test]
fn cleanup_pg18() {
    if require_root("cleanup_pg18") {
        cleanup(PgVersion::Pg18);
    }
}
