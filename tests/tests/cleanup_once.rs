//! Privileged test of `pgmon-agent cleanup --once [--json] [--dry-run]` on PostgreSQL 15
//! and 18, with no agent running, real psql sessions and the real binary: a dry run reports
//! the three sessions the rules call for and touches none; the real round terminates the
//! session idle in transaction and the lock-wait blocker, cancels the long statement, spares
//! the exempt role and the waiter, reports each in JSON, logs each under
//! `pgmon::enforcement` and audits each; a second round has nothing to do. A role the SQL
//! functions refuse (listed in `pgmon.exempt_roles` only) gives exit code 1, a policy
//! without rules exit code 2.

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Cluster, ClusterOptions, PgVersion, Transport, agent_binary, budget::agent_config, free_port,
    require_root,
};

const DB: &str = "shop";

/// Rules: idle in transaction over 2 s, `sleeper`'s statements over 2 s, lock waits over
/// 1 s; `boss` exempt. The agent's own switches say off and observe: `--once` does not
/// read them.
const RULES: &str = "cleanup:\n  enabled: false\n  mode: observe\n  \
                     idle_in_transaction_seconds: 2\n  \
                     statement_seconds_by_role: [{match: sleeper, seconds: 2}]\n  \
                     lock_wait_seconds: 1\n  exempt: [boss]\n";

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

fn audit(cluster: &Cluster) -> Vec<String> {
    cluster
        .psql_admin(
            "SELECT role || '|' || action || '|' || result FROM pgmon.audit \
             WHERE source = 'cleanup' ORDER BY id",
        )
        .expect("audit")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn cleanup_once(config: &Path, args: &[&str]) -> Output {
    Command::new(agent_binary().expect("binary"))
        .args(["cleanup", "--once", "--config"])
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("pgmon-agent cleanup --once")
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `(role, action, outcome, result)` of each action of a JSON report, sorted by role.
fn actions(r: &serde_json::Value) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = r["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
            (s("role"), s("action"), s("outcome"), s("result"))
        })
        .collect();
    v.sort();
    v
}

fn once(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    for file in [
        "sql/001_roles.sql",
        "sql/002_enforcement.sql",
        "sql/005_sessions.sql",
    ] {
        cluster.run_sql_file("postgres", file).expect("sql");
    }
    for role in ["idler", "sleeper", "locker", "waiter", "boss", "shielded"] {
        cluster.create_role(role).expect("role");
    }
    cluster.create_database(DB, "postgres").expect("db");
    cluster
        .psql(
            "postgres",
            DB,
            Transport::Unix,
            "CREATE TABLE t AS SELECT generate_series(1, 1000) AS g; GRANT SELECT ON t TO PUBLIC; GRANT UPDATE ON t TO locker",
        )
        .expect("table");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgmon.yaml");
    std::fs::write(&config, agent_config(&cluster, free_port(), RULES)).expect("config");

    let hold = |role: &str, sql: &str| {
        let mut s = cluster
            .hold_session(role, DB, Transport::Unix)
            .expect("session");
        s.run(sql).expect("statement");
        s
    };
    let _idler = hold("idler", "BEGIN; SELECT 1");
    let _locker = hold("locker", "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE");
    let _boss = hold("boss", "BEGIN; SELECT 1");
    let waiter = spawn_psql(&cluster, "waiter", "SELECT count(*) FROM t");
    let sleeper = spawn_psql(&cluster, "sleeper", "SELECT pg_sleep(60)");
    thread::sleep(Duration::from_millis(3_000));

    // A dry run: the same three decisions, observed; nothing signalled.
    let out = cleanup_once(&config, &["--json", "--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&out);
    assert_eq!(r["dry_run"], true);
    assert_eq!(
        (r["observed"].as_u64(), r["applied"].as_u64()),
        (Some(3), Some(0)),
        "{r}"
    );
    for role in ["idler", "locker", "sleeper", "waiter", "boss"] {
        assert_eq!(
            sessions_of(&cluster, role),
            1,
            "{role} untouched by the dry run"
        );
    }

    // The round.
    let t = Instant::now();
    let out = cleanup_once(&config, &["--json", "--log-format", "json"]);
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let r = report(&out);
    println!(
        "cleanup --once took {took:?}: {}",
        serde_json::to_string(&r["actions"]).unwrap_or_default()
    );
    assert_eq!(r["dry_run"], false);
    assert_eq!(
        (
            r["applied"].as_u64(),
            r["refused"].as_u64(),
            r["failed"].as_u64()
        ),
        (Some(3), Some(0), Some(0)),
        "{r}"
    );
    let got = actions(&r);
    let expect = [
        ("idler", "terminate", "applied", "applied: terminated"),
        ("locker", "terminate", "applied", "applied: terminated"),
        ("sleeper", "cancel", "applied", "applied: cancelled"),
    ];
    assert_eq!(got.len(), 3, "{got:?}");
    for (g, e) in got.iter().zip(expect) {
        assert_eq!((g.0.as_str(), g.1.as_str(), g.2.as_str(), g.3.as_str()), e);
    }
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("\"target\":\"pgmon::enforcement\""))
        .collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines.iter().all(|l| l.contains("cleanup --once")),
        "{stderr}"
    );

    // The effect.
    let t = Instant::now();
    while sessions_of(&cluster, "idler") + sessions_of(&cluster, "locker") > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "idler and locker still there"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let out = sleeper.wait_with_output().expect("sleeper");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("canceling statement due to user request"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        waiter.wait_with_output().expect("waiter").status.success(),
        "the waiter got its lock and was not touched"
    );
    assert_eq!(sessions_of(&cluster, "boss"), 1, "exempt boss stays");
    let rows = audit(&cluster);
    assert_eq!(rows.len(), 6, "3 observed, 3 applied: {rows:?}");
    assert!(
        rows[..3].iter().all(|r| r.ends_with("observed (dry run)")),
        "{rows:?}"
    );
    assert!(
        rows.contains(&"idler|terminate|applied: terminated".to_owned()),
        "{rows:?}"
    );

    // Nothing left to do: exit 0, a text report with no action.
    let out = cleanup_once(&config, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("0 action(s)") && text.contains("0 applied"),
        "{text}"
    );

    // A role only pgmon.exempt_roles shields: the SQL function refuses, exit code 1.
    cluster
        .psql_admin("INSERT INTO pgmon.exempt_roles VALUES ('shielded')")
        .expect("exempt_roles");
    let _shielded = hold("shielded", "BEGIN; SELECT 1");
    thread::sleep(Duration::from_millis(2_500));
    let out = cleanup_once(&config, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("shielded") && text.contains("refused"),
        "{text}"
    );
    assert_eq!(sessions_of(&cluster, "shielded"), 1);

    // No rule at all: it cannot run, exit code 2, and says why.
    std::fs::write(
        &config,
        agent_config(&cluster, free_port(), "cleanup:\n  exempt: [boss]\n"),
    )
    .expect("config");
    let out = cleanup_once(&config, &["--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        report(&out)["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no cleanup rule")
    );
}

#[test]
fn cleanup_once_pg15() {
    if require_root("cleanup_once_pg15") {
        once(PgVersion::Pg15);
    }
}

#[test]
fn cleanup_once_pg18() {
    if require_root("cleanup_once_pg18") {
        once(PgVersion::Pg18);
    }
}
