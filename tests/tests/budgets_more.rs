//! More privileged tests of query-cost budgets, each on PostgreSQL 15 and 18 with the real
//! kernel probes, agent binary, clusters and psql clients:
//!
//! - observe mode climbs the whole ladder in the agent and the audit log, yet changes
//!   nothing in the catalog and ends no session;
//! - exempt roles (listed in `exempt:`, or superusers) are never charged nor touched, even
//!   when the policy maps every role to a tier, and the SQL functions refuse a superuser
//!   on their own;
//! - an agent killed with SIGKILL mid-ladder loses no spend and no step: its successor
//!   reloads both, does not apply the step again, and undoes it when the window passes.

use std::time::{Duration, Instant};

use pgmon_tests::budget::{
    HEAVY_SQL, agent_config, audit, budget, create_big_table, install_sql, role_flags,
    saved_originals, set_connection_limit, wait_until,
};
use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, Transport, agent_binary, fingerprint, free_port,
    pid_alive, quote_literal, require_root,
};

/// A `budgets:` section: one tier `t` of `budget` over `window_s`, `roles` (a YAML flow
/// list of rules), `exempt` (a YAML flow list) and a three-step ladder: warn at 0.5,
/// connection limit 2 at 1.0, lock at `lock_at`.
fn policy(
    mode: &str,
    budget: u32,
    window_s: u32,
    roles: &str,
    exempt: &str,
    lock_at: f64,
) -> String {
    format!(
        "budgets:\n  enabled: true\n  mode: {mode}\n\
         \x20 tiers:\n    t: {{budget: {budget}, window_seconds: {window_s}}}\n\
         \x20 roles: {roles}\n  exempt: {exempt}\n\
         \x20 ladder:\n    - {{at: 0.5, action: warn}}\n    - {{at: 1.0, action: connection_limit, limit: 2}}\n\
         \x20   - {{at: {lock_at:.1}, action: lock}}\n"
    )
}

fn start_agent(config: &str, port: u16) -> Agent {
    Agent::start(
        &agent_binary().expect("binary"),
        config,
        format!("127.0.0.1:{port}"),
    )
    .unwrap_or_else(|e| panic!("agent: {e:#}"))
}

/// A cluster with pgmon's SQL and, for each name, a LOGIN role with its own database
/// holding `big`.
fn cluster_with(version: PgVersion, roles: &[&str]) -> Cluster {
    let cluster = Cluster::start(version, ClusterOptions::default())
        .unwrap_or_else(|e| panic!("{version}: {e:#}"));
    install_sql(&cluster);
    for role in roles {
        cluster.create_role_with_db(role).expect("role");
        create_big_table(&cluster, role);
    }
    cluster
}

fn heavy(cluster: &Cluster, role: &str) -> anyhow::Result<String> {
    cluster.psql(role, role, Transport::Unix, HEAVY_SQL)
}

fn step(agent: &Agent, role: &str) -> Option<String> {
    budget(agent, role).and_then(|b| b["step"].as_str().map(str::to_owned))
}

fn assert_clean_log(agent: &Agent) {
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Observe mode: the agent decides every step up to `lock` and audits it, but the role
/// keeps its LOGIN and connection limit, its open session survives, it can still log in,
/// and pgmon saved no settings to restore.
fn observe(version: PgVersion) {
    let cluster = cluster_with(version, &["heavy"]);
    set_connection_limit(&cluster, "heavy", 7);
    let port = free_port();
    let config = agent_config(
        &cluster,
        port,
        &policy(
            "observe",
            10_000,
            60,
            "[{match: heavy, tier: t}]",
            "[]",
            2.0,
        ),
    );
    let agent = start_agent(&config, port);
    let mut held = cluster
        .hold_session("heavy", "heavy", Transport::Unix)
        .expect("session");

    let started = Instant::now();
    while step(&agent, "heavy").as_deref() != Some("lock") {
        heavy(&cluster, "heavy").unwrap_or_else(|e| panic!("observe mode refused a query: {e:#}"));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never reached lock: {:?}, audit {:?}",
            budget(&agent, "heavy"),
            audit(&cluster, "heavy")
        );
    }
    wait_until("three audit rows", Duration::from_secs(10), || {
        audit(&cluster, "heavy").len() >= 3
    });
    // A warning never touches the catalog, so it is `logged` in both modes; the steps that
    // would have changed the role say they were only observed.
    assert_eq!(
        audit(&cluster, "heavy"),
        ["warn:logged", "connection_limit:observed", "lock:observed"]
    );
    assert_eq!(
        role_flags(&cluster, "heavy"),
        "true,7",
        "pg_roles unchanged"
    );
    assert_eq!(saved_originals(&cluster), 0, "pgmon.role_original is empty");
    held.run("SELECT 1")
        .expect("the session opened before the climb is still alive");
    assert_eq!(
        cluster
            .psql("heavy", "heavy", Transport::Unix, "SELECT 1")
            .expect("heavy still logs in")
            .trim(),
        "1"
    );
    assert_clean_log(&agent);
}

/// Runs [`HEAVY_SQL`] `n` times in one held session of `role`.
fn heavy_in_session(cluster: &Cluster, role: &str, n: usize) {
    let mut s = cluster
        .hold_session(role, role, Transport::Unix)
        .unwrap_or_else(|e| panic!("{role}: {e:#}"));
    for _ in 0..n {
        s.run(HEAVY_SQL)
            .unwrap_or_else(|e| panic!("{role} was interrupted: {e:#}"));
    }
}

/// Every role matches the policy's `'*'` rule; `boss` is in `exempt:` and `root2` is a
/// superuser. Both spend far past the top step: the agent sees their queries but never
/// charges them (no budget in its status), writes no audit row and leaves their catalog
/// entries alone, while `tenant` beside them is locked by the same policy. And the SQL
/// layer refuses on its own: `pgmon` may not lock or limit `root2`.
fn exempt(version: PgVersion) {
    let cluster = cluster_with(version, &["boss", "tenant"]);
    cluster
        .psql_admin("CREATE ROLE root2 SUPERUSER LOGIN")
        .expect("root2");
    cluster.create_database("root2", "root2").expect("db");
    create_big_table(&cluster, "root2");
    let port = free_port();
    let config = agent_config(
        &cluster,
        port,
        &policy(
            "enforce",
            2_000,
            60,
            "[{match: '*', tier: t}]",
            "[boss]",
            2.0,
        ),
    );
    let agent = start_agent(&config, port);

    // Each execution costs about the budget: 8 of them are ~4× the spend that locks.
    let runs = 8;
    for role in ["boss", "root2"] {
        heavy_in_session(&cluster, role, runs);
    }
    let fp = fingerprint(HEAVY_SQL);
    for role in ["boss", "root2"] {
        let seen = agent
            .wait_fingerprint_calls(role, &fp, runs as u64, Duration::from_secs(10))
            .expect("status");
        assert!(
            seen >= runs as u64,
            "{role}: the agent saw {seen} of {runs}"
        );
    }
    // The control: the same policy locks an ordinary role within a few executions.
    let started = Instant::now();
    while !role_flags(&cluster, "tenant").starts_with("false") {
        let _ = heavy(&cluster, "tenant");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tenant never locked: {:?}",
            audit(&cluster, "tenant")
        );
    }
    assert!(
        audit(&cluster, "tenant").contains(&"lock:applied".to_owned()),
        "{:?}",
        audit(&cluster, "tenant")
    );

    for role in ["boss", "root2"] {
        assert_eq!(audit(&cluster, role), Vec::<String>::new(), "{role}: audit");
        assert_eq!(role_flags(&cluster, role), "true,-1", "{role}: pg_roles");
        assert_eq!(budget(&agent, role), None, "{role} has no budget");
        cluster
            .psql(role, role, Transport::Unix, "SELECT 1")
            .unwrap_or_else(|e| panic!("{role} can no longer log in: {e:#}"));
    }

    // pgmon's own functions refuse a superuser, whoever calls them.
    for call in [
        "SELECT pgmon.lock_role('root2')",
        "SELECT pgmon.set_connection_limit('root2', 0)",
    ] {
        let err = cluster
            .psql("pgmon", "postgres", Transport::Unix, call)
            .expect_err(call);
        let text = format!("{err:#}");
        assert!(
            text.contains(r#"pgmon refuses to enforce on role "root2": it is a superuser"#),
            "{call}: {text}"
        );
    }
    // The policy's exempt list is in the catalog too: the functions refuse boss.
    let listed = cluster
        .query_value(
            "postgres",
            "postgres",
            "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pgmon.exempt_roles",
        )
        .expect("exempt_roles");
    assert_eq!(
        listed, "boss",
        "budgets.exempt copied into pgmon.exempt_roles"
    );
    let err = cluster
        .psql(
            "pgmon",
            "postgres",
            Transport::Unix,
            "SELECT pgmon.lock_role('boss')",
        )
        .expect_err("lock boss");
    assert!(
        format!("{err:#}").contains("it is listed in pgmon.exempt_roles"),
        "{err:#}"
    );
    assert_eq!(role_flags(&cluster, "boss"), "true,-1");
    assert_eq!(role_flags(&cluster, "root2"), "true,-1");
    assert_eq!(
        saved_originals(&cluster),
        1,
        "only tenant's settings are saved"
    );
    cluster
        .psql("root2", "root2", Transport::Unix, "SELECT 1")
        .expect("root2 still logs in");
    assert_clean_log(&agent);
}

/// Sum of `role`'s persisted ledger buckets.
fn persisted_spend(cluster: &Cluster, role: &str) -> f64 {
    cluster
        .query_value(
            "postgres",
            "postgres",
            &format!(
                "SELECT coalesce(sum((b->>1)::float8), 0) FROM pgmon.budget_ledgers, \
                 jsonb_array_elements(buckets) AS b WHERE role = {}",
                quote_literal(role)
            ),
        )
        .expect("ledger")
        .parse()
        .expect("spend")
}

fn spend(agent: &Agent, role: &str) -> f64 {
    budget(agent, role)
        .and_then(|b| b["spend"].as_f64())
        .unwrap_or(f64::NAN)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

/// The agent is killed with SIGKILL while `heavy` is on the `connection_limit` step.
/// Its successor, same config, shows the same spend and step without applying the step
/// again (no new audit row, the limit still in pg_roles), and once the 20 s window has
/// passed it restores the original limit and audits the restore.
fn sigkill(version: PgVersion) {
    const WINDOW: u64 = 20;
    let cluster = cluster_with(version, &["heavy"]);
    set_connection_limit(&cluster, "heavy", 7);
    let port = free_port();
    let config = agent_config(
        &cluster,
        port,
        &policy(
            "enforce",
            10_000,
            WINDOW as u32,
            "[{match: heavy, tier: t}]",
            "[]",
            3.0,
        ),
    );
    // An audit row past audit.retention_days (90) and one inside it: the agent prunes
    // the first at start and keeps the second.
    cluster
        .psql_admin(
            "INSERT INTO pgmon.audit (at, role, source, step, action, result) VALUES \
             (now() - interval '91 days', 'heavy', 'budget', 'old', 'warn', 'logged'), \
             (now() - interval '89 days', 'heavy', 'budget', 'kept', 'warn', 'logged')",
        )
        .expect("old audit rows");
    let mut first = start_agent(&config, port);
    wait_until("the old audit row pruned", Duration::from_secs(10), || {
        audit(&cluster, "heavy").len() == 1
    });
    assert_eq!(
        audit(&cluster, "heavy"),
        ["warn:logged"],
        "the 89-day row is kept"
    );
    cluster
        .psql_admin("DELETE FROM pgmon.audit WHERE step = 'kept'")
        .expect("clear");

    let t0 = Instant::now();
    while role_flags(&cluster, "heavy") != "true,2" {
        heavy(&cluster, "heavy").unwrap_or_else(|e| panic!("heavy refused: {e:#}"));
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never limited: {:?}",
            audit(&cluster, "heavy")
        );
    }
    // Traffic has stopped. Wait until the spend has stood still for 2 s and the persisted
    // ledger holds all of it.
    let (mut last, mut since) = (f64::NAN, Instant::now());
    wait_until("the ledger persisted", Duration::from_secs(10), || {
        let now = spend(&first, "heavy");
        if now != last {
            (last, since) = (now, Instant::now());
        }
        since.elapsed() >= Duration::from_secs(2) && close(persisted_spend(&cluster, "heavy"), now)
    });
    // One row per role, whatever the window.
    assert_eq!(
        cluster
            .query_value(
                "postgres",
                "postgres",
                "SELECT count(*)::text || ',' || bool_and(jsonb_array_length(buckets) <= 60)::text \
                 FROM pgmon.budget_ledgers",
            )
            .expect("ledgers"),
        "1,true"
    );
    let before = budget(&first, "heavy").expect("heavy's budget");
    assert_eq!(before["step"], "connection_limit", "{before}");
    let rows = audit(&cluster, "heavy");
    assert_eq!(rows, ["warn:logged", "connection_limit:applied"]);

    let pid = first.pid() as i32;
    first.kill().expect("SIGKILL");
    assert!(!pid_alive(pid), "agent {pid} survived SIGKILL");
    let second = start_agent(&config, port);
    let after = budget(&second, "heavy").expect("heavy's budget after the restart");
    // The first charge fell in the second after t0: it stays in the window for 19 s more.
    let elapsed = t0.elapsed();
    println!("{version}: restarted agent read {elapsed:?} after the first charge");
    assert!(
        elapsed < Duration::from_secs(WINDOW - 2),
        "restart too slow to compare spends ({elapsed:?})"
    );
    let (s0, s1) = (
        before["spend"].as_f64().unwrap(),
        after["spend"].as_f64().unwrap(),
    );
    assert!(close(s0, s1), "spend {s0} before SIGKILL, {s1} after");
    assert_eq!(after["step"], "connection_limit", "{after}");

    // Nothing applied again so far; the exact audit after the restore below is the
    // barrier that shows it never was (a second `connection_limit` row would sit there).
    assert_eq!(audit(&cluster, "heavy"), rows, "the step was applied again");
    assert_eq!(role_flags(&cluster, "heavy"), "true,2");
    assert_eq!(
        saved_originals(&cluster),
        1,
        "the original limit is still saved"
    );

    wait_until("the restore", Duration::from_secs(WINDOW + 15), || {
        role_flags(&cluster, "heavy") == "true,7"
    });
    wait_until("the restore's audit row", Duration::from_secs(5), || {
        audit(&cluster, "heavy").len() == 3
    });
    assert_eq!(
        audit(&cluster, "heavy"),
        ["warn:logged", "connection_limit:applied", "restore:applied"]
    );
    assert_eq!(saved_originals(&cluster), 0, "nothing left to restore");
    assert_clean_log(&first);
    assert_clean_log(&second);
}

#[test]
fn budgets_observe_pg15() {
    if require_root("budgets_observe_pg15") {
        observe(PgVersion::Pg15);
    }
}

#[test]
fn budgets_observe_pg18() {
    if require_root("budgets_observe_pg18") {
        observe(PgVersion::Pg18);
    }
}

#[test]
fn budgets_exempt_pg15() {
    if require_root("budgets_exempt_pg15") {
        exempt(PgVersion::Pg15);
    }
}

#[test]
fn budgets_exempt_pg18() {
    if require_root("budgets_exempt_pg18") {
        exempt(PgVersion::Pg18);
    }
}

#[test]
fn budgets_sigkill_pg15() {
    if require_root("budgets_sigkill_pg15") {
        sigkill(PgVersion::Pg15);
    }
}

#[test]
fn budgets_sigkill_pg18() {
    if require_root("budgets_sigkill_pg18") {
        sigkill(PgVersion::Pg18);
    }
}
