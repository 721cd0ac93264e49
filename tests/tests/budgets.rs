//! Privileged tests of query-cost budgets: the cost worker's estimate equals the server's
//! generic plan, a heavy role climbs the ladder (audit rows prove each step) while a light
//! role beside it is untouched, and as the window passes the steps are undone one by one
//! (down from `lock` the limit comes before LOGIN) until the role's original LOGIN and
//! connection limit are back. Real kernel, agent and clusters.

use std::time::{Duration, Instant};

use pgmon_tests::budget::{
    HEAVY_SQL, agent_config, audit, budget, create_big_table, install_sql, role_flags,
    saved_originals, set_connection_limit, wait_until,
};
use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, Transport, agent_binary, free_port, require_root,
};

fn config(cluster: &Cluster, port: u16, mode: &str) -> String {
    agent_config(
        cluster,
        port,
        &format!(
            "budgets:\n  enabled: true\n  mode: {mode}\n\
             \x20 tiers:\n    free: {{budget: 20000, window_seconds: 20}}\n\
             \x20 roles:\n    - {{match: 'heavy*', tier: free}}\n    - {{match: light, tier: free}}\n\
             \x20 exempt: [boss]\n\
             \x20 ladder:\n    - {{at: 0.5, action: warn}}\n    - {{at: 1.0, action: connection_limit, limit: 2}}\n\
             \x20   - {{at: 2.0, action: lock}}\n"
        ),
    )
}

/// The generic-plan cost of [`HEAVY_SQL`] as the server computes it, asked as `heavy`.
fn server_generic_cost(cluster: &Cluster, version: PgVersion) -> f64 {
    let normalized = HEAVY_SQL.replace('5', "$1");
    let sql = if version == PgVersion::Pg15 {
        format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE p AS {normalized}; \
             EXPLAIN (FORMAT JSON) EXECUTE p(NULL)"
        )
    } else {
        format!("EXPLAIN (GENERIC_PLAN, FORMAT JSON) {normalized}")
    };
    let json = cluster
        .psql("heavy", "heavy", Transport::Unix, &sql)
        .expect("explain");
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
    v[0]["Plan"]["Total Cost"].as_f64().expect("Total Cost")
}

/// Runs [`HEAVY_SQL`] as `heavy` until the agent's status shows the role on `step`; panics
/// after 30 s. A run's own failure (the role already locked) is not checked: the step is.
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

fn ladder(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    install_sql(&cluster);
    for role in ["heavy", "light"] {
        cluster.create_role_with_db(role).expect("role");
    }
    create_big_table(&cluster, "heavy");
    set_connection_limit(&cluster, "heavy", 7);
    let expected = server_generic_cost(&cluster, version);
    assert!(expected > 1000.0, "seq scan cost {expected}");

    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port, "enforce"),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");

    // One execution: charged the default, then corrected to the server's estimate.
    cluster
        .psql("heavy", "heavy", Transport::Unix, HEAVY_SQL)
        .expect("query");
    wait_until("the estimate", Duration::from_secs(10), || {
        budget(&agent, "heavy")
            .is_some_and(|b| (b["spend"].as_f64().unwrap_or(0.0) - expected).abs() < 1e-6)
    });
    cluster
        .psql("light", "light", Transport::Unix, "SELECT 1")
        .expect("light");

    // Two bursts two seconds apart, so the window ages them out one after the other:
    // the first stops at `warn` (spend S1 < budget), the second runs until the role is
    // locked (S1 + S2 ≥ 2 × budget, so S2 > budget on its own).
    run_until_step(&cluster, &agent, "warn");
    std::thread::sleep(Duration::from_secs(2));
    run_until_step(&cluster, &agent, "lock");
    assert!(
        role_flags(&cluster, "heavy").starts_with("false"),
        "{:?}",
        audit(&cluster, "heavy")
    );
    assert_eq!(
        audit(&cluster, "heavy"),
        ["warn:logged", "connection_limit:applied", "lock:applied"],
        "one audit row per step, in order"
    );
    assert!(audit(&cluster, "light").is_empty());
    assert_eq!(role_flags(&cluster, "light"), "true,-1");

    // The first burst leaves the 20 s window: down to the limit, which is set before LOGIN
    // comes back (the role never holds its original limit of 7 early).
    wait_until(
        "the step down to the limit",
        Duration::from_secs(30),
        || role_flags(&cluster, "heavy") == "true,2",
    );
    // The second burst leaves it too: the original settings are back.
    wait_until("the restore", Duration::from_secs(30), || {
        audit(&cluster, "heavy").last().map(String::as_str) == Some("restore:applied")
    });
    assert_eq!(
        audit(&cluster, "heavy"),
        [
            "warn:logged",
            "connection_limit:applied",
            "lock:applied",
            "connection_limit:applied",
            "unlock:applied",
            "restore:applied"
        ]
    );
    assert_eq!(role_flags(&cluster, "heavy"), "true,7");
    assert_eq!(saved_originals(&cluster), 0, "nothing left to restore");
    let log = agent.log();
    assert!(log.contains("budget step"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn budgets_pg15() {
    if require_root("budgets_pg15") {
        ladder(PgVersion::Pg15);
    }
}

#[test]
fn budgets_pg18() {
    if require_root("budgets_pg18") {
        ladder(PgVersion::Pg18);
    }
}
