//! Privileged test of `pgmon-agent unlock --budget ROLE` on PostgreSQL 15 and 18, with the
//! real kernel probes, agent binary, clusters and psql clients: a role driven up the ladder
//! to `lock` (NOLOGIN, connection limit 2 over its own 7) in a window far longer than the
//! test is given back by hand: its LOGIN and connection limit are back at once, its spend
//! and utilisation read 0 in the status and in /metrics, its persisted ledger row is gone,
//! the audit has the restore and the reset (in the table and in `/api/v1/audit`), the
//! status said beforehand what the unlock would do, the agent logged it under
//! `pgmon::enforcement`, and the role climbs again from zero when it spends again. A role
//! without a budget is refused.

use std::time::{Duration, Instant};

use pgmon_tests::budget::{
    HEAVY_SQL, agent_config, audit, budget, create_big_table, install_sql, role_flags,
    set_connection_limit, wait_until,
};
use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, Transport, agent_binary, free_port, require_root,
};

fn policy() -> &'static str {
    "budgets:\n  enabled: true\n  mode: enforce\n\
     \x20 tiers:\n    t: {budget: 2000, window_seconds: 3600}\n\
     \x20 roles: [{match: heavy, tier: t}]\n  exempt: [boss]\n\
     \x20 ladder:\n    - {at: 0.5, action: warn}\n    - {at: 1.0, action: connection_limit, limit: 2}\n\
     \x20   - {at: 2.0, action: lock}\n"
}

fn unlock_budget(agent: &Agent, role: &str) -> std::process::Output {
    std::process::Command::new(agent_binary().expect("binary"))
        .args(["unlock", "--budget", role, "--addr", agent.addr()])
        .output()
        .expect("pgmon-agent unlock --budget")
}

/// Runs [`HEAVY_SQL`] as `heavy` until the agent's status shows it on `step`.
fn run_until_step(cluster: &Cluster, agent: &Agent, step: &str) {
    let started = Instant::now();
    loop {
        let _ = cluster.psql("heavy", "heavy", Transport::Unix, HEAVY_SQL);
        if budget(agent, "heavy").is_some_and(|b| b["step"] == step) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never reached {step}: {:?} {:?}",
            budget(agent, "heavy"),
            audit(cluster, "heavy")
        );
    }
}

fn ledger_rows(cluster: &Cluster, role: &str) -> String {
    cluster
        .query_value(
            "postgres",
            "postgres",
            &format!("SELECT count(*) FROM pgmon.budget_ledgers WHERE role = '{role}'"),
        )
        .expect("pgmon.budget_ledgers")
}

fn unlock(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    install_sql(&cluster);
    cluster.create_role_with_db("heavy").expect("role");
    create_big_table(&cluster, "heavy");
    set_connection_limit(&cluster, "heavy", 7);
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &agent_config(&cluster, port, policy()),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");

    run_until_step(&cluster, &agent, "lock");
    wait_until("the lock", Duration::from_secs(10), || {
        role_flags(&cluster, "heavy") == "false,2"
    });
    wait_until("the persisted ledger", Duration::from_secs(10), || {
        ledger_rows(&cluster, "heavy") == "1"
    });
    let before = budget(&agent, "heavy").expect("budget");
    let utilisation = before["utilisation"].as_f64().unwrap_or(0.0);
    assert!(utilisation >= 2.0, "{before}");
    // What the status says an unlock would do, before it is done.
    let said = before["unlock"].as_str().unwrap_or_default();
    assert!(
        said.contains("takes it off step lock (pgmon.restore_role gives back LOGIN")
            && said.contains("forgets"),
        "{said}"
    );

    let t = Instant::now();
    let out = unlock_budget(&agent, "heavy");
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("unlock --budget answered in {took:?}: {}", stdout.trim());
    assert!(
        stdout.contains("reset by hand") && stdout.contains("role now LOGIN, connection limit 7"),
        "{stdout}"
    );
    // Given back by the time the command returns.
    assert_eq!(role_flags(&cluster, "heavy"), "true,7");
    let after = budget(&agent, "heavy").expect("budget");
    assert_eq!(after["spend"].as_f64(), Some(0.0), "{after}");
    assert_eq!(after["utilisation"].as_f64(), Some(0.0), "{after}");
    assert!(after["step"].is_null(), "{after}");
    assert_eq!(
        agent.metric("pgmon_role_budget_utilisation", &[("role", "heavy")]),
        0.0
    );
    assert_eq!(
        ledger_rows(&cluster, "heavy"),
        "0",
        "persisted ledger reset"
    );
    assert_eq!(
        audit(&cluster, "heavy"),
        [
            "warn:logged",
            "connection_limit:applied",
            "lock:applied",
            "restore:applied",
            "reset:reset"
        ]
    );
    // The same trail through the read API (the UI's Budgets page), newest first.
    let (code, body) = agent.get("/api/v1/audit?role=heavy").expect("GET");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["data"]["installed"], true, "{v:#}");
    let actions: Vec<&str> = v["data"]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        actions,
        ["reset", "restore", "lock", "connection_limit", "warn"],
        "{v:#}"
    );
    assert!(
        v["data"]["rows"][0]["at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{v:#}"
    );
    assert_eq!(v["sql"][1]["name"], "audit", "{v:#}");
    let reset_utilisation = cluster
        .query_value(
            "postgres",
            "postgres",
            "SELECT utilisation FROM pgmon.audit WHERE action = 'reset'",
        )
        .expect("audit");
    println!("audited utilisation before the reset: {reset_utilisation}");
    let log = agent.log();
    assert!(log.contains("budget reset"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // A role without a budget (exempt, or unknown) is refused; nothing is audited.
    let refused = unlock_budget(&agent, "boss");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no budget"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(audit(&cluster, "boss").is_empty());

    // Its spend starts from zero: `SELECT 1` and one more execution is all it has spent.
    cluster
        .psql("heavy", "heavy", Transport::Unix, "SELECT 1")
        .expect("heavy logs in again");
    cluster
        .psql("heavy", "heavy", Transport::Unix, HEAVY_SQL)
        .expect("heavy runs again");
    wait_until("the new spend", Duration::from_secs(10), || {
        budget(&agent, "heavy").is_some_and(|b| b["spend"].as_f64().unwrap_or(0.0) > 0.0)
    });
    let spend = budget(&agent, "heavy").expect("budget")["spend"]
        .as_f64()
        .unwrap_or(0.0);
    let was = before["spend"].as_f64().unwrap_or(0.0);
    println!("spend before the reset {was:.0}, after one more execution {spend:.0}");
    assert!(spend < was / 2.0, "{spend} vs {was}");
}

#[test]
fn budget_unlock_pg15() {
    if require_root("budget_unlock_pg15") {
        unlock(PgVersion::Pg15);
    }
}

#[test]
fn budget_unlock_pg18() {
    if require_root("budget_unlock_pg18") {
        unlock(PgVersion::Pg18);
    }
}
