//! Privileged test of `pgmon-agent release-all` on PostgreSQL 15 and 18, with the real
//! kernel probes, agent binary (connected as `pgmon`), clusters and psql clients: the
//! agent holds `slow` locked by its storage quota and `heavy` on a budget step (connection
//! limit 2 over its own 7). Without a terminal and without `--yes` nothing happens; with
//! `--yes` the agent is stopped (SIGTERM, found by its listening socket) and exits 0, both
//! roles have their LOGIN and connection limit back, pgmon's tables hold no lock, saved
//! setting, step or quota state for them, and the audit has one `release` row per role; a
//! second run finds nothing to do.

mod storage_util;

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use pgmon_tests::budget::{HEAVY_SQL, budget, create_big_table, role_flags, set_connection_limit};
use pgmon_tests::{Agent, PgVersion, Transport, agent_binary, free_port, require_root};
use storage_util::*;

const ROLES: &str = "    - {match: slow, soft_limit: 1MB, hard_limit: 2MB, hard_grace_period: 1}\n";

const BUDGETS: &str = "budgets:\n  enabled: true\n  mode: enforce\n\
     \x20 tiers:\n    t: {budget: 2000, window_seconds: 600}\n\
     \x20 roles: [{match: heavy, tier: t}]\n\
     \x20 ladder:\n    - {at: 0.5, action: warn}\n    - {at: 1.0, action: connection_limit, limit: 2}\n";

fn release_all(agent: &Agent, args: &[&str]) -> Output {
    Command::new(agent_binary().expect("binary"))
        .args(["release-all", "--config"])
        .arg(agent.config_path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("pgmon-agent release-all")
}

fn count(cluster: &pgmon_tests::Cluster, sql_text: &str) -> u64 {
    sql(cluster, "postgres", "postgres", sql_text)
        .trim()
        .parse()
        .expect("count")
}

fn release(version: PgVersion) {
    let cluster = slow_tenant_cluster(version);
    cluster.create_role_with_db("heavy").expect("heavy");
    create_big_table(&cluster, "heavy");
    set_connection_limit(&cluster, "heavy", 7);
    let port = free_port();
    let yaml = format!("{}{BUDGETS}", config(&cluster, port, ROLES));
    let mut agent = Agent::start(
        &agent_binary().expect("binary"),
        &yaml,
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");

    // `slow` over its hard limit: locked after a second's grace.
    wait_until("slow counted", Duration::from_secs(10), || {
        storage_role(&agent, "slow").is_some_and(|r| r["usage_bytes"].is_u64())
    });
    sql(
        &cluster,
        "slow",
        "tenants",
        "CREATE TABLE s AS SELECT repeat('x', 1000) AS v FROM generate_series(1, 3000)",
    );
    wait_until("slow locked", Duration::from_secs(15), || {
        state(&agent, "slow") == "locked" && !can_login(&cluster, "slow")
    });
    // `heavy` spends until the budget limits its connections.
    let started = Instant::now();
    while budget(&agent, "heavy").is_none_or(|b| b["step"] != "connection_limit") {
        let _ = cluster.psql("heavy", "heavy", Transport::Unix, HEAVY_SQL);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "heavy never limited: {:?}",
            budget(&agent, "heavy")
        );
    }
    wait_until("heavy limited", Duration::from_secs(10), || {
        role_flags(&cluster, "heavy") == "true,2"
    });

    // No terminal, no --yes: refused, nothing touched.
    let out = release_all(&agent, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(agent.is_running(), "the agent still runs");
    assert!(!can_login(&cluster, "slow"));

    let t = Instant::now();
    let out = release_all(&agent, &["--yes"]);
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    println!("release-all took {took:?}:\n{stdout}");
    assert!(
        stdout.contains(&format!("agent: pid {}", agent.pid())),
        "{stdout}"
    );
    assert!(
        stdout.contains("roles pgmon changed: heavy, slow"),
        "{stdout}"
    );
    assert!(stdout.contains("agent stopped: SIGTERM"), "{stdout}");
    assert!(stdout.contains("2 of 2 role(s) given back"), "{stdout}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("WARN release-all"))
            .count(),
        3,
        "a log line for the stop and one per role: {stderr}"
    );

    // The agent exited, cleanly, and says why.
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("wait")
        .expect("the agent exited");
    assert!(status.success(), "{status:?}");
    assert!(agent.log().contains("SIGTERM: detaching"));

    // Both roles given back, nothing left in pgmon's tables.
    assert_eq!(role_flags(&cluster, "slow"), "true,-1");
    assert_eq!(role_flags(&cluster, "heavy"), "true,7");
    for table in [
        "pgmon.role_locks",
        "pgmon.role_original",
        "pgmon.budget_state",
        "pgmon.budget_ledgers",
    ] {
        assert_eq!(
            count(&cluster, &format!("SELECT count(*) FROM {table}")),
            0,
            "{table}"
        );
    }
    assert_eq!(
        count(
            &cluster,
            "SELECT count(*) FROM pgmon.storage_state WHERE role = 'slow'"
        ),
        0
    );
    let rows = sql(
        &cluster,
        "postgres",
        "postgres",
        "SELECT role || '|' || action || '|' || result FROM pgmon.audit \
         WHERE source = 'release-all' ORDER BY role",
    );
    let rows: Vec<&str> = rows.lines().collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].starts_with("heavy|release|budget: restored; role now LOGIN, connection limit 7"),
        "{rows:?}"
    );
    assert!(
        rows[1].starts_with("slow|release|storage: unlocked;")
            && rows[1].ends_with("role now LOGIN, connection limit -1"),
        "{rows:?}"
    );
    sql(&cluster, "slow", "tenants", "SELECT 1");

    // Again: no agent, nothing to give back.
    let out = release_all(&agent, &["--yes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("agent: none listening"), "{stdout}");
    assert!(stdout.contains("roles pgmon changed: none"), "{stdout}");
}

#[test]
fn release_all_pg15() {
    if require_root("release_all_pg15") {
        release(PgVersion::Pg15);
    }
}

#[test]
fn release_all_pg18() {
    if require_root("release_all_pg18") {
        release(PgVersion::Pg18);
    }
}
