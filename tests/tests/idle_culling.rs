//! Privileged test of idle-session culling (seed 002 "Total Connections … Kill idle
//! connections", issue 19) on PostgreSQL 15 and 18. Six idle sessions of a tenant, two of
//! an exempt role and one of the tenant idle in transaction (those three opened first, so
//! the oldest); the threshold is set three under the cluster's client connections:
//! - `mode: observe` ends nothing, audits (and counts) the batch it would end: the two
//!   longest idle tenant sessions;
//! - `mode: enforce` (by SIGHUP) ends the three longest idle tenant sessions, oldest first,
//!   two in one round and one in the next, then stops at the threshold; the exempt role's
//!   sessions and the one idle in transaction are untouched.

use std::{
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, AgentOptions, Cluster, ClusterOptions, HeldSession, PgVersion, Transport, agent_binary,
    budget::agent_config, free_port, require_root,
};

const DB: &str = "app";

fn policy(mode: &str, connections: i64) -> String {
    format!(
        "cleanup:\n  enabled: true\n  mode: enforce\n  interval_seconds: 1\n  \
         idle_culling:\n    enabled: true\n    mode: {mode}\n    connections: {connections}\n    \
         min_idle_seconds: 1\n    batch: 2\n    exempt: [keeper]\n"
    )
}

/// Rewrites the agent's policy with `yaml` and waits for the reload to be applied.
fn reload(agent: &Agent, yaml: &str) {
    let before = agent.metric("pgmon_config_reloads_total", &[("result", "applied")]);
    std::fs::write(agent.config_path(), yaml).expect("policy");
    // SAFETY: kill(2) on the agent we started.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
    agent.wait_metric(
        "pgmon_config_reloads_total",
        &[("result", "applied")],
        Duration::from_secs(10),
        |v| v > before,
    );
}

fn alive(admin: &mut HeldSession, pid: u32) -> bool {
    admin
        .run(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        ))
        .expect("pg_stat_activity")
        .trim()
        == "1"
}

/// `pid|result` of the `idle_culling` audit rows, oldest first (the pid is read from the
/// rule text `idle_culling: pid N idle …`).
fn audit(admin: &mut HeldSession) -> Vec<String> {
    admin
        .run(
            "SELECT substring(step FROM 'pid ([0-9]+)') || '|' || role || '|' || result \
             FROM pgmon.audit WHERE source = 'idle_culling' ORDER BY id",
        )
        .expect("audit")
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < within, "timed out: {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn idle_culling(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    for file in [
        "sql/001_roles.sql",
        "sql/002_enforcement.sql",
        "sql/005_sessions.sql",
    ] {
        cluster.run_sql_file("postgres", file).expect("sql");
    }
    for role in ["tenant", "keeper"] {
        cluster.create_role(role).expect("role");
    }
    cluster.create_database(DB, "postgres").expect("db");
    let port = free_port();
    let mut yaml = agent_config(&cluster, port, &policy("observe", 10_000));
    let agent = Agent::start_with(
        &agent_binary().expect("binary"),
        &yaml,
        format!("127.0.0.1:{port}"),
        AgentOptions {
            extra_args: vec!["--log-format".into(), "json".into()],
            ..AgentOptions::default()
        },
    )
    .expect("agent");
    let mut admin = cluster
        .hold_session("postgres", "postgres", Transport::Unix)
        .expect("admin session");

    // Oldest first: the one idle in transaction and the exempt role's, then the tenant's
    // six idle sessions, 200 ms apart so that their state_change order is theirs.
    let open = |role: &str, sql: &str| {
        let mut s = cluster
            .hold_session(role, DB, Transport::Unix)
            .expect("session");
        s.run(sql).expect("statement");
        thread::sleep(Duration::from_millis(200));
        s
    };
    let in_tx = open("tenant", "BEGIN; SELECT 1;");
    let keepers = [open("keeper", "SELECT 1"), open("keeper", "SELECT 1")];
    let tenants: Vec<HeldSession> = (0..6).map(|_| open("tenant", "SELECT 1")).collect();
    let pids: Vec<u32> = tenants.iter().map(HeldSession::backend_pid).collect();
    thread::sleep(Duration::from_millis(1500));

    // Every client backend, the agent's and this admin session included, as the agent
    // counts them; stable before it is used.
    let count = |admin: &mut HeldSession| -> i64 {
        admin
            .run("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
            .expect("count")
            .trim()
            .parse()
            .expect("number")
    };
    let clients = count(&mut admin);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(count(&mut admin), clients, "the connection count settled");
    let limit = clients - 3;

    // Observe: the batch it would end is audited and counted, nothing ends.
    yaml = agent_config(&cluster, port, &policy("observe", limit));
    reload(&agent, &yaml);
    wait_for("observed", Duration::from_secs(15), || {
        audit(&mut admin).len() >= 2
    });
    thread::sleep(Duration::from_secs(3));
    let observed = audit(&mut admin);
    assert_eq!(
        observed,
        [
            format!("{}|tenant|observed (mode: observe)", pids[0]),
            format!("{}|tenant|observed (mode: observe)", pids[1]),
        ],
        "the two longest idle, once each"
    );
    for pid in pids.iter().chain([&in_tx.backend_pid()]) {
        assert!(alive(&mut admin, *pid), "observe ended pid {pid}");
    }
    assert_eq!(
        agent.metric(
            "pgmon_idle_sessions_culled_total",
            &[("result", "observed")]
        ),
        2.0
    );
    assert_eq!(count(&mut admin), clients);

    // Enforce: the three longest idle tenant sessions, oldest first, then no more.
    let t = Instant::now();
    yaml = agent_config(&cluster, port, &policy("enforce", limit));
    reload(&agent, &yaml);
    wait_for("three culled", Duration::from_secs(15), || {
        pids[..3].iter().all(|p| !alive(&mut admin, *p))
    });
    let took = t.elapsed();
    thread::sleep(Duration::from_secs(3));
    let applied: Vec<String> = audit(&mut admin).split_off(2);
    eprintln!(
        "{version:?}: {clients} client connections, threshold {limit}; culled in {took:?}: {applied:?}"
    );
    assert_eq!(
        applied,
        (0..3)
            .map(|i| format!("{}|tenant|applied: terminated", pids[i]))
            .collect::<Vec<_>>(),
        "oldest first, and no more than the excess"
    );
    for pid in &pids[3..] {
        assert!(
            alive(&mut admin, *pid),
            "pid {pid} was culled past the threshold"
        );
    }
    assert!(
        alive(&mut admin, in_tx.backend_pid()),
        "an idle-in-transaction session is never culled"
    );
    for k in &keepers {
        assert!(alive(&mut admin, k.backend_pid()), "exempt keeper culled");
    }
    assert_eq!(count(&mut admin), limit, "back at the threshold");
    assert_eq!(
        agent.metric(
            "pgmon_idle_sessions_culled_total",
            &[("result", "terminated")]
        ),
        3.0
    );
    // One structured line under pgmon::enforcement per decision: 2 observed, 3 applied.
    let lines: Vec<serde_json::Value> = agent
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["target"] == "pgmon::enforcement"
                && v["fields"]["rule"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("idle_culling"))
        })
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[4]["fields"]["role"], "tenant");
    assert_eq!(lines[4]["fields"]["result"], "applied: terminated");
}

#[test]
fn idle_culling_pg15() {
    if require_root("idle_culling_pg15") {
        idle_culling(PgVersion::Pg15);
    }
}

#[test]
fn idle_culling_pg18() {
    if require_root("idle_culling_pg18") {
        idle_culling(PgVersion::Pg18);
    }
}
